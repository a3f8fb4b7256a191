//! Vault rotations end to end against a REAL OpenBao 2.7.2 (`tests/kit/src/openbao.rs`), a real
//! PostgreSQL that OpenBao's database engine manages, and the real sever server: the
//! static-role watcher, watched mounts, forwarded `database/rotate` and kv-v2 `data-write`
//! events resolved against OpenBao, and namespaces.
//!
//! sever logs in with a token holding only `integrations/vault/sever-policy-openbao.hcl`
//! (no default policy), so these tests also show that the shipped policy is enough and that
//! sever never reads a password; the tests themselves read passwords as root.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::config::ConfigBuilder;
use crate::support::sever::{SECRET, TestServer, Workspace, create_admin, now, pids, sorted};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::openbao::{TestBao, TokenOptions};
use sever_testkit::pg::TestPostgres;

const GONE: Duration = Duration::from_secs(5);
const POLICY: &str = include_str!("../../../../integrations/vault/sever-policy-openbao.hcl");

/// PostgreSQL (target `main`) managed by OpenBao's database engine at `database/`, and a
/// workspace holding a token with only sever's OpenBao policy.
struct Env {
    pg: TestPostgres,
    bao: TestBao,
    ws: Workspace,
    token: String,
}

async fn env() -> Env {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    let bao = TestBao::start().await;
    bao.enable_database("", "database", &pg).await;
    bao.write_policy("", "sever", POLICY).await.unwrap();
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
        .await
        .token;
    Env {
        pg,
        bao,
        ws: Workspace::new(),
        token,
    }
}

impl Env {
    /// Writes the config: `[vault]` at this OpenBao with `method = "token"` (`token`, else
    /// sever's policy token), `vault_extra` after `[vault.auth]`, then `credentials`.
    fn config(&self, token: Option<&str>, vault_extra: &str, credentials: &str) -> PathBuf {
        let ws = &self.ws;
        let config = ws.target_config(ws.config(), "main", &self.pg);
        let config = ws
            .vault_token(config, &self.bao.addr(), token.unwrap_or(&self.token))
            .merge_toml(&format!("[vault.auth]\n{vault_extra}\n"))
            .merge_toml(credentials);
        ws.write_config(&config.toml())
    }

    /// Creates `login` on PostgreSQL and static role `role` managing it on `mount` in `ns`;
    /// returns the password OpenBao set at once.
    async fn static_role(&self, ns: &str, mount: &str, role: &str, login: &str) -> String {
        self.pg.create_login(login, "initial").await;
        self.bao
            .create_static_role(ns, mount, role, login, "1h")
            .await;
        self.bao.static_creds(ns, mount, role).await.1
    }

    /// Rotates `role` now; returns its new `last_vault_rotation` and password.
    async fn rotate(&self, ns: &str, mount: &str, role: &str) -> (DateTime<Utc>, String) {
        self.bao.rotate_role(ns, mount, role).await;
        let rotated = self.bao.read_static_role(ns, mount, role).await;
        let password = self.bao.static_creds(ns, mount, role).await.1;
        (rotated.last_vault_rotation, password)
    }

    /// Waits (bounded) until the audit trail holds at least `n` records of `kind`.
    async fn wait_records(&self, kind: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let records = self.ws.records(kind).await;
            if records.len() >= n {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} {kind} records: {records:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A Vault event notification envelope as Vault sends it (every metadata value a string).
fn envelope(
    event_type: &str,
    mount: &str,
    plugin: &str,
    metadata: Value,
    ns: Option<&str>,
) -> Value {
    let id = uuid::Uuid::now_v7().to_string();
    json!({
        "id": id, "source": "https://vaultproject.io/", "specversion": "1.0", "type": "*",
        "data": {
            "event": {"id": id, "metadata": metadata},
            "event_type": event_type,
            "plugin_info": {"mount_class": "secret", "mount_accessor": format!("{plugin}_1"),
                            "mount_path": format!("{mount}/"), "plugin": plugin},
            "namespace": ns.map(|n| format!("{n}/")).unwrap_or_default(),
        },
        "datacontentype": "application/cloudevents",
        "time": Utc::now().to_rfc3339(),
    })
}

fn rotate_event(mount: &str, role: &str, ns: Option<&str>) -> Value {
    let metadata = json!({"name": role, "operation": "rotate", "modified": "true",
                          "path": format!("{mount}/rotate-role/{role}")});
    envelope("database/rotate", mount, "database", metadata, ns)
}

/// A kv-v2 `data-write` event for `path` on `mount`, claiming `version`.
fn kv_event(mount: &str, path: &str, version: &str) -> Value {
    let data_path = format!("{mount}/data/{path}");
    let metadata = json!({"data_path": data_path, "path": data_path, "current_version": version,
                          "oldest_version": "1", "modified": "true", "operation": "data-write"});
    envelope("kv-v2/data-write", mount, "kv", metadata, None)
}

/// Forwards `event` to `/v1/events/vault`, signed as a forwarder would (Standard Webhooks).
async fn forward(server: &TestServer, event: &Value) -> (StatusCode, Value) {
    let body = serde_json::to_vec(event).unwrap();
    let id = format!("vault_{}", uuid::Uuid::now_v7().simple());
    let r = server
        .post_signed("/v1/events/vault?wait=true", &body, &id, now(), SECRET)
        .await;
    (r.status(), r.json().await.unwrap())
}

/// The cutoff an `action.planned` record applies: sessions that began before it end.
fn cutoff(planned: &Value) -> DateTime<Utc> {
    let before = planned["scope"]["before"].as_str();
    before
        .unwrap_or_else(|| panic!("no scope.before in {planned}"))
        .parse()
        .unwrap()
}

const ORDERS: &str = "[credentials.orders]\n[credentials.orders.vault]\nmount = \"database\"\nrole = \"orders\"\ntarget = \"main\"\n";
const WATCH: &str = "[vault.watcher]\ninterval = \"200ms\"\n";

#[tokio::test]
async fn the_watcher_ends_sessions_older_than_last_vault_rotation_once_across_restarts_and_events()
{
    let e = env().await;
    let p0 = e.static_role("", "database", "orders", "orders_app").await;
    e.pg.create_login("bystander", "pw0").await;
    let old = e.pg.open_sessions("orders_app", &p0, 2).await;
    let bystander = e.pg.open_sessions("bystander", "pw0", 1).await;
    let config = e.config(None, WATCH, ORDERS);
    let server = TestServer::start(&config).await;

    // First sight: a rotation at the role's creation, which every session postdates.
    let first = e.wait_records("action.completed", 1).await;
    assert!(e.pg.is_alive(old[0]).await && e.pg.is_alive(old[1]).await);

    // OpenBao rotates; no event at all: the watcher notices.
    let (rotated, p1) = e.rotate("", "database", "orders").await;
    let newer = e.pg.open_sessions("orders_app", &p1, 1).await;
    for pid in &old {
        assert!(
            e.pg.wait_gone(*pid, GONE).await,
            "the watcher did not end {pid}"
        );
    }
    let completed = e.wait_records("action.completed", 2).await;
    assert!(
        e.pg.is_alive(newer[0]).await,
        "opened with the new password: must survive"
    );
    assert!(e.pg.is_alive(bystander[0]).await);
    let planned = e.ws.records("action.planned").await;
    assert_eq!(planned.len(), 2, "{planned:?}");
    let this = &planned[1];
    assert_eq!(this["vault_path"], "database/orders", "{this}");
    assert_eq!(this["source"], "watcher", "{this}");
    assert_eq!(
        cutoff(this),
        rotated,
        "the cutoff is exactly last_vault_rotation: {this}"
    );
    assert_eq!(
        completed[1]["targets"][0]["terminated"], 2,
        "{first:?} {completed:?}"
    );
    let mut ended: Vec<i64> =
        e.ws.records("session.terminated")
            .await
            .iter()
            .map(|t| t["pid"].as_i64().unwrap())
            .collect();
    ended.sort_unstable();
    assert_eq!(ended, sorted(&old));

    // A restart neither misses nor repeats: nothing new for the same rotation.
    server.stop().await;
    let server = TestServer::start(&config).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(e.ws.records("action.planned").await.len(), 2);

    // The same rotation forwarded as an event is a duplicate of the watcher's action.
    let (status, body) = forward(&server, &rotate_event("database", "orders", None)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("duplicate")),
        "{body}"
    );
    let duplicates = e.ws.records("event.duplicate").await;
    let key = format!(
        "vault-rotation:database/orders:{}",
        rotated.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    );
    assert!(
        duplicates.iter().any(|d| d["key"] == key),
        "{key} in {duplicates:?}"
    );
    assert_eq!(e.ws.records("action.planned").await.len(), 2);
    assert!(e.pg.is_alive(newer[0]).await);
    server.stop().await;
}

#[tokio::test]
async fn a_forwarded_rotation_is_resolved_against_openbao_and_a_watcher_pass_repeats_nothing() {
    let e = env().await;
    let p0 = e.static_role("", "database", "orders", "orders_app").await;
    let old = e.pg.open_sessions("orders_app", &p0, 1).await;
    let (rotated, p1) = e.rotate("", "database", "orders").await;
    let newer = e.pg.open_sessions("orders_app", &p1, 1).await;
    let config = e.config(None, "", ORDERS);
    let server = TestServer::start(&config).await;

    let (status, report) = forward(&server, &rotate_event("database", "orders", None)).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["vault_path"], "database/orders");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&old));
    assert!(e.pg.wait_gone(old[0], GONE).await);
    assert!(e.pg.is_alive(newer[0]).await);
    let planned = e.ws.records("action.planned").await;
    assert_eq!(cutoff(&planned[0]), rotated, "{planned:?}");
    server.stop().await;

    // With the watcher on, its first pass sees the same rotation: done already.
    let config = e.config(None, WATCH, ORDERS);
    let server = TestServer::start(&config).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(e.ws.records("action.planned").await.len(), 1);
    assert!(e.pg.is_alive(newer[0]).await);
    server.stop().await;
}

#[tokio::test]
async fn a_watched_mount_covers_every_static_role_on_it_even_ones_created_later() {
    let e = env().await;
    let pa = e.static_role("", "database", "svc_a", "a_app").await;
    let pb = e.static_role("", "database", "svc_b", "b_app").await;
    // A role whose user is protected: refused and audited once, never terminated.
    e.bao
        .create_static_role("", "database", "svc_admin", "postgres", "1h")
        .await;
    let a = e.pg.open_sessions("a_app", &pa, 1).await;
    let b = e.pg.open_sessions("b_app", &pb, 1).await;
    let watch =
        format!("{WATCH}[[vault.watcher.mounts]]\nmount = \"database\"\ntarget = \"main\"\n");
    let server = TestServer::start(&e.config(None, &watch, "")).await;
    e.wait_records("action.completed", 2).await; // first sight of svc_a and svc_b

    e.rotate("", "database", "svc_a").await;
    assert!(
        e.pg.wait_gone(a[0], GONE).await,
        "svc_a's rotation did not end a_app's session"
    );
    assert!(e.pg.is_alive(b[0]).await);
    e.wait_records("action.completed", 3).await;

    // A role created after start is watched too.
    let pc = e.static_role("", "database", "svc_c", "c_app").await;
    let c = e.pg.open_sessions("c_app", &pc, 1).await;
    e.wait_records("action.completed", 4).await; // first sight of svc_c
    e.rotate("", "database", "svc_c").await;
    assert!(
        e.pg.wait_gone(c[0], GONE).await,
        "svc_c's rotation did not end c_app's session"
    );
    e.rotate("", "database", "svc_b").await;
    assert!(
        e.pg.wait_gone(b[0], GONE).await,
        "svc_b's rotation did not end b_app's session"
    );

    let planned = e.ws.records("action.planned").await;
    for role in ["svc_a", "svc_b", "svc_c"] {
        let path = format!("database/{role}");
        let n = planned
            .iter()
            .filter(|p| p["vault_path"] == path.as_str())
            .count();
        assert_eq!(n, 2, "{role}: first sight and one rotation: {planned:?}");
    }
    assert!(
        planned.iter().all(|p| p["credential"].is_null()),
        "{planned:?}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let refused = e.ws.records("request.rejected").await;
    let protected = refused
        .iter()
        .filter(|r| r["code"] == "protected_login")
        .count();
    assert_eq!(protected, 1, "refused once, not on every pass: {refused:?}");
    server.stop().await;
}

const LEGACY: &str = "[credentials.legacy]\nlogins = [{ target = \"main\", login = \"legacy_app\" }]\n\
     [credentials.legacy.vault]\nmount = \"secret\"\nkv_path = \"apps/legacy/db\"\n";

#[tokio::test]
async fn a_kv_v2_write_is_resolved_against_openbaos_metadata_not_the_events_word() {
    let e = env().await;
    e.pg.create_login("legacy_app", "pw0").await;
    let server = TestServer::start(&e.config(None, "", LEGACY)).await;
    let old = e.pg.open_sessions("legacy_app", "pw0", 2).await;

    // The mapped secret does not exist in OpenBao yet: a clear 4xx, nothing executed.
    let (status, body) = forward(&server, &kv_event("secret", "apps/legacy/db", "1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "vault_role_not_found", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("apps/legacy/db"), "{body}");
    assert!(e.ws.records("action.planned").await.is_empty());
    assert!(e.pg.is_alive(old[0]).await);

    // Version 1, then the password changes with version 2; a session opens after that.
    e.bao
        .kv_put("", "secret", "apps/legacy/db", &json!({"password": "pw0"}))
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let v1_session = e.pg.open_sessions("legacy_app", "pw0", 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    e.pg.exec("ALTER ROLE legacy_app PASSWORD 'pw1'").await;
    let v2 = e
        .bao
        .kv_put("", "secret", "apps/legacy/db", &json!({"password": "pw1"}))
        .await;
    assert_eq!(v2, 2);
    let written: DateTime<Utc> =
        e.bao.kv_metadata("", "secret", "apps/legacy/db").await["versions"]["2"]["created_time"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let newer = e.pg.open_sessions("legacy_app", "pw1", 1).await;

    // The event lies about the version (says 1): OpenBao's metadata wins.
    let (status, report) = forward(&server, &kv_event("secret", "apps/legacy/db", "1")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["vault_path"], "secret/apps/legacy/db", "{report}");
    let mut ended = old.clone();
    ended.extend(&v1_session);
    assert_eq!(
        pids(&report, "main", "terminated"),
        sorted(&ended),
        "{report}"
    );
    for pid in &ended {
        assert!(e.pg.wait_gone(*pid, GONE).await);
    }
    assert!(
        e.pg.is_alive(newer[0]).await,
        "opened after version 2 was written"
    );
    let planned = e.ws.records("action.planned").await;
    assert_eq!(planned.len(), 1, "{planned:?}");
    assert_eq!(cutoff(&planned[0]), written, "{planned:?}");
    let accepted = e.ws.records("event.accepted").await;
    assert_eq!(accepted[0]["kv_version"], "2", "{accepted:?}");

    // The same version again (here claiming 2): a duplicate, nothing more executed.
    let (status, body) = forward(&server, &kv_event("secret", "apps/legacy/db", "2")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("duplicate")),
        "{body}"
    );
    assert_eq!(e.ws.records("action.planned").await.len(), 1);
    assert!(e.pg.is_alive(newer[0]).await);
    server.stop().await;
}

#[tokio::test]
async fn a_namespaces_roles_are_other_credentials_than_the_same_names_in_the_root() {
    let e = env().await;
    e.bao.create_namespace("team").await;
    e.bao.enable_database("team", "database", &e.pg).await;
    let root_pw = e.static_role("", "database", "orders", "orders_app").await;
    let team_pw = e
        .static_role("team", "database", "orders", "team_app")
        .await;
    let team_b_pw = e
        .static_role("team", "database", "reports", "team_reports")
        .await;
    let root_s = e.pg.open_sessions("orders_app", &root_pw, 1).await;
    let team_s = e.pg.open_sessions("team_app", &team_pw, 1).await;
    let team_b = e.pg.open_sessions("team_reports", &team_b_pw, 1).await;
    let credentials = ConfigBuilder::new()
        .merge_toml(ORDERS)
        .set("credentials.team_orders.vault.mount", "database")
        .set("credentials.team_orders.vault.role", "orders")
        .set("credentials.team_orders.vault.namespace", "team")
        .set("credentials.team_orders.vault.target", "main")
        .toml();
    let watch = format!(
        "{WATCH}[[vault.watcher.mounts]]\nmount = \"database\"\ntarget = \"main\"\nnamespace = \"team\"\n"
    );
    // The root token: sever's policy is written per namespace; one token spans both here.
    let config = e.config(Some(e.bao.root_token()), &watch, &credentials);
    let server = TestServer::start(&config).await;
    e.wait_records("action.completed", 3).await; // first sight of all three roles

    // The team's "orders" rotates: only team_app's session ends.
    let (rotated, _) = e.rotate("team", "database", "orders").await;
    assert!(e.pg.wait_gone(team_s[0], GONE).await);
    e.wait_records("action.completed", 4).await;
    assert!(
        e.pg.is_alive(root_s[0]).await,
        "the root namespace's orders did not rotate"
    );
    assert!(e.pg.is_alive(team_b[0]).await);
    let planned = e.ws.records("action.planned").await;
    let last = planned.last().unwrap();
    assert_eq!(last["vault_path"], "team/database/orders", "{planned:?}");
    assert_eq!(last["credential"], "team_orders", "{planned:?}");
    assert_eq!(cutoff(last), rotated);

    // Forwarded: the team's event is that same rotation; the root's is the root credential's.
    let (status, body) = forward(&server, &rotate_event("database", "orders", Some("team"))).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("duplicate")),
        "{body}"
    );
    e.rotate("", "database", "orders").await;
    let (status, report) = forward(&server, &rotate_event("database", "orders", None)).await;
    assert!(status.is_success(), "{report}");
    assert!(e.pg.wait_gone(root_s[0], GONE).await);

    // The watched mount in the namespace covers its other roles.
    e.rotate("team", "database", "reports").await;
    assert!(e.pg.wait_gone(team_b[0], GONE).await);
    let planned = e.ws.records("action.planned").await;
    assert!(
        planned
            .iter()
            .any(|p| p["vault_path"] == "team/database/reports" && p["credential"].is_null()),
        "{planned:?}"
    );
    assert!(
        planned
            .iter()
            .any(|p| p["vault_path"] == "database/orders" && p["credential"] == "orders"),
        "{planned:?}"
    );
    server.stop().await;
}
