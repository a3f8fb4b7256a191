//! The shipped policies (integrations/vault/) against a real OpenBao 2.7.2: the OpenBao file
//! loads, and a token holding only it can do what sever needs and cannot read a password; the
//! Vault file is refused only for its Enterprise event stanzas, and its other stanzas are the
//! OpenBao file's.

use std::collections::BTreeMap;

use serde_json::json;
use sever_testkit::openbao::{TestBao, TokenOptions};
use sever_testkit::pg::TestPostgres;

const OPENBAO_POLICY: &str =
    include_str!("../../../../integrations/vault/sever-policy-openbao.hcl");
const VAULT_POLICY: &str = include_str!("../../../../integrations/vault/sever-policy.hcl");

/// One `path "…" { … }` stanza: its path and its body (comments and blank lines dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stanza {
    path: String,
    body: Vec<String>,
}

impl Stanza {
    /// Stanzas 3 and 4 of the Vault file: the event websocket and event delivery.
    fn is_subscriber(&self) -> bool {
        self.path.starts_with("sys/events/subscribe/")
            || self.body.iter().any(|l| l.contains("subscribe"))
    }
}

/// The stanzas of a policy file. The shipped files are flat (no nested blocks), which is all
/// this reads.
fn stanzas(hcl: &str) -> Vec<Stanza> {
    let mut out = Vec::new();
    let mut current: Option<Stanza> = None;
    for line in hcl.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("path \"") {
            let (path, tail) = rest.split_once('"').expect("closing quote of a path");
            assert_eq!(tail.trim(), "{", "one stanza opening per line: {line}");
            assert!(current.is_none(), "nested stanza at {line}");
            current = Some(Stanza {
                path: path.to_owned(),
                body: Vec::new(),
            });
        } else if line == "}" {
            out.push(current.take().expect("a stanza to close"));
        } else {
            current
                .as_mut()
                .unwrap_or_else(|| panic!("outside any stanza: {line}"))
                .body
                .push(line.to_owned());
        }
    }
    assert!(current.is_none(), "unclosed stanza");
    out
}

/// The text of `stanzas` as a policy.
fn render(stanzas: &[Stanza]) -> String {
    stanzas
        .iter()
        .map(|s| format!("path \"{}\" {{\n  {}\n}}\n", s.path, s.body.join("\n  ")))
        .collect()
}

#[tokio::test]
async fn a_token_with_only_the_openbao_policy_can_do_what_sever_needs_and_read_no_password() {
    let pg = TestPostgres::start();
    let bao = TestBao::start().await;
    bao.write_policy("", "sever", OPENBAO_POLICY)
        .await
        .expect("OpenBao accepts sever-policy-openbao.hcl");

    // The mounts and paths the policy file names: database/, and kv-v2 secret/ (dev mode has
    // it) with apps/legacy/db.
    bao.enable_database("", "database", &pg).await;
    pg.create_login("orders_app", "initial").await;
    bao.create_static_role("", "database", "orders", "orders_app", "1h")
        .await;
    bao.create_dynamic_role("", "database", "reporting", "1h", "2h")
        .await;
    bao.enable_kv2("", "secret").await;
    bao.kv_put("", "secret", "apps/legacy/db", &json!({"password": "p1"}))
        .await;
    bao.kv_put("", "secret", "apps/other", &json!({"password": "p2"}))
        .await;

    // Without the `default` policy: the file alone must suffice.
    let token = bao
        .create_token(
            "",
            &TokenOptions {
                policies: vec!["sever".into()],
                ttl: "1h".into(),
                no_default_policy: true,
                ..TokenOptions::default()
            },
        )
        .await;
    assert_eq!(token.auth["policies"], json!(["sever"]));
    let t = token.token.as_str();

    let allowed = [
        ("GET", "database/static-roles/orders"),
        ("LIST", "database/static-roles"),
        ("GET", "secret/metadata/apps/legacy/db"),
        ("GET", "auth/token/lookup-self"),
        ("POST", "auth/token/renew-self"),
    ];
    for (method, path) in allowed {
        let (status, body) = bao.request(t, "", method, path, Some(&json!({}))).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
        assert!(!body.to_string().contains("password\":\""), "{body}");
    }
    let (_, role) = bao
        .request(t, "", "GET", "database/static-roles/orders", None)
        .await;
    assert_eq!(role["data"]["username"], "orders_app");
    assert!(role["data"]["last_vault_rotation"].is_string(), "{role}");
    let (_, meta) = bao
        .request(t, "", "GET", "secret/metadata/apps/legacy/db", None)
        .await;
    assert_eq!(meta["data"]["current_version"], 1, "{meta}");

    // No password, no change, nothing unmapped.
    let denied = [
        ("GET", "database/static-creds/orders"),
        ("GET", "database/creds/reporting"),
        ("GET", "secret/data/apps/legacy/db"),
        ("PUT", "secret/data/apps/legacy/db"),
        ("GET", "secret/metadata/apps/other"),
        ("POST", "database/rotate-role/orders"),
        ("PUT", "database/static-roles/orders"),
        ("GET", "database/config/pg"),
        ("GET", "sys/policies/acl/sever"),
    ];
    for (method, path) in denied {
        let (status, body) = bao
            .request(t, "", method, path, Some(&json!({"data": {}})))
            .await;
        // A valid token without the capability: "1 error occurred:\n\t* permission denied".
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(
            body["errors"][0]
                .as_str()
                .is_some_and(|e| e.contains("permission denied")),
            "{method} {path}: {body}"
        );
    }
}

#[tokio::test]
async fn openbao_refuses_the_vault_policy_only_for_its_event_stanzas_and_the_rest_is_the_openbao_file()
 {
    let vault = stanzas(VAULT_POLICY);
    let openbao = stanzas(OPENBAO_POLICY);
    let (subscriber, rest): (Vec<Stanza>, Vec<Stanza>) =
        vault.into_iter().partition(Stanza::is_subscriber);
    assert_eq!(
        subscriber
            .iter()
            .map(|s| s.path.as_str())
            .collect::<Vec<_>>(),
        [
            "sys/events/subscribe/database/*",
            "sys/events/subscribe/kv-v2/data-write",
            "secret/data/apps/legacy/db",
            "database/*",
        ],
        "stanzas 3 and 4"
    );
    // Same paths, same capabilities, in either order.
    let by_path = |s: &[Stanza]| -> BTreeMap<String, Vec<String>> {
        s.iter().map(|s| (s.path.clone(), s.body.clone())).collect()
    };
    assert_eq!(by_path(&rest), by_path(&openbao));
    assert!(
        openbao.iter().all(|s| !s.is_subscriber()),
        "no event stanza in the OpenBao file"
    );

    let bao = TestBao::start().await;
    // As shipped: refused, for an Enterprise event keyword (OpenBao names the first it meets).
    let refused = bao
        .write_policy("", "vault-file", VAULT_POLICY)
        .await
        .expect_err("OpenBao refuses the Vault file");
    assert!(refused.starts_with("400"), "{refused}");
    assert!(
        refused.contains("invalid key \\\"subscribe_event_types\\\"")
            || refused.contains("invalid capability \\\"subscribe\\\""),
        "{refused}"
    );
    // Each event stanza on its own is refused; everything else together is accepted.
    for stanza in subscriber.iter().filter(|s| s.body.len() > 1) {
        let err = bao
            .write_policy("", "one", &render(std::slice::from_ref(stanza)))
            .await
            .expect_err("an event delivery stanza");
        assert!(err.contains("subscribe"), "{err}");
    }
    bao.write_policy("", "vault-file-rest", &render(&rest))
        .await
        .expect("the Vault file without its event stanzas");
}
