//! sever's Vault login against a REAL OpenBao 2.7.2 (and a real PostgreSQL and the real
//! server): AppRole tokens renewed at two thirds of their TTL and replaced at their max TTL,
//! batch tokens replaced before they expire, `method = "token"` files an agent rewrites,
//! TLS failures named by cause, and the `vault` component of `/readyz`.
//!
//! What sever did is read from OpenBao's file audit device, not from sever's logs: every
//! login, renewal and read it made, and whether OpenBao refused any.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::config::{ConfigBuilder, file};
use crate::support::sever::{TestServer, Workspace, create_admin};
use reqwest::StatusCode;
use serde_json::Value;
use sever_testkit::certs::{TestCa, Validity};
use sever_testkit::openbao::{
    AppRoleOptions, AuditEvent, BaoOptions, TestBao, TlsListener, TokenOptions,
};
use sever_testkit::pg::TestPostgres;

/// The policy sever ships for OpenBao: the tests' tokens hold only this.
const POLICY: &str = include_str!("../../../../integrations/vault/sever-policy-openbao.hcl");
/// The watcher reads the static role every 500 ms: sever uses its token all the time.
const WATCH: &str = "[vault.watcher]\ninterval = \"500ms\"\n";
const ORDERS: &str = "[credentials.orders]\n[credentials.orders.vault]\nmount = \"database\"\n\
                      role = \"orders\"\ntarget = \"main\"\n";
const GONE: Duration = Duration::from_secs(5);

/// PostgreSQL with the login `orders_app`, managed by OpenBao's static role `orders`
/// (database engine at `database/`), the `sever` policy, and a file audit device.
struct Env {
    pg: TestPostgres,
    bao: TestBao,
    ws: Workspace,
}

async fn env() -> Env {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("orders_app", "initial").await;
    let bao = TestBao::start_audited(BaoOptions::default()).await;
    bao.enable_database("", "database", &pg).await;
    bao.create_static_role("", "database", "orders", "orders_app", "1h")
        .await;
    bao.write_policy("", "sever", POLICY).await.unwrap();
    Env {
        pg,
        bao,
        ws: Workspace::new(),
    }
}

impl Env {
    /// An AppRole `sever` with `options`; returns sever's `[vault.auth]` for it.
    async fn approle(&self, options: AppRoleOptions) -> ConfigBuilder {
        approle_auth(&self.ws, &self.bao, options).await
    }

    /// sever watching the static role `orders` on target `main`, logging in with `auth`.
    async fn server(&self, auth: &ConfigBuilder) -> TestServer {
        let config = self.ws.target_config(self.ws.config(), "main", &self.pg);
        let text = vault(config, &self.bao.addr(), auth)
            .merge_toml(WATCH)
            .merge_toml(ORDERS)
            .toml();
        TestServer::start(&self.ws.write_config(&text)).await
    }

    /// A session of `orders_app` with its current password.
    async fn session(&self) -> i32 {
        let (user, password) = self.bao.static_creds("", "database", "orders").await;
        self.pg.open_sessions(&user, &password, 1).await[0]
    }

    /// OpenBao rotates `orders`: sever's watcher must end `pid` (opened before).
    async fn rotation_ends(&self, pid: i32, why: &str) {
        self.bao.rotate_role("", "database", "orders").await;
        assert!(
            self.pg.wait_gone(pid, GONE).await,
            "the watcher did not end the old session after the rotation {why}"
        );
    }

    /// Every request sever (not the test, which acts as root) made.
    fn severs(&self) -> Vec<AuditEvent> {
        severs(&self.bao)
    }
}

fn severs(bao: &TestBao) -> Vec<AuditEvent> {
    bao.audit_events()
        .into_iter()
        .filter(|e| !e.as_root())
        .collect()
}

fn count(events: &[AuditEvent], path: &str) -> usize {
    events
        .iter()
        .filter(|e| e.path == path && e.error.is_none())
        .count()
}

/// sever's requests that OpenBao answered with an error, as text for an assertion message.
fn failures(events: &[AuditEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.error.is_some())
        .map(|e| format!("{} {} {}: {:?}", e.time, e.operation, e.path, e.error))
        .collect()
}

/// `config` with `[vault]` at `address` and `[vault.auth]` from `auth`.
fn vault(config: ConfigBuilder, address: &str, auth: &ConfigBuilder) -> ConfigBuilder {
    config.set("vault.address", address).merge(auth)
}

async fn approle_auth(ws: &Workspace, bao: &TestBao, options: AppRoleOptions) -> ConfigBuilder {
    let (role_id, secret_id) = bao.enable_approle("", "sever", &["sever"], &options).await;
    ConfigBuilder::new()
        .set("vault.auth.method", "approle")
        .set("vault.auth.role_id", role_id)
        .set(
            "vault.auth.secret_id",
            file(&ws.secret_path("vault.secret-id", &secret_id)),
        )
}

fn token_auth(path: &Path) -> ConfigBuilder {
    ConfigBuilder::new()
        .set("vault.auth.method", "token")
        .set("vault.auth.token", file(&path.display().to_string()))
}

/// Writes `token` to `path` as an agent does: a new file renamed over the old one.
fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{token}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A token holding only the `sever` policy, with `ttl`.
fn token_options(ttl: &str, renewable: bool) -> TokenOptions {
    TokenOptions {
        policies: vec!["sever".into()],
        ttl: ttl.into(),
        renewable,
        no_default_policy: true,
        ..TokenOptions::default()
    }
}

/// Polls `/readyz` (bounded) until its `vault` component's `ok` is `ok`; returns the body.
async fn wait_vault(server: &TestServer, ok: bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (status, body) = server.readyz().await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["vault"]["ok"] == ok {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never showed vault ok = {ok}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn approle_tokens_are_renewed_at_two_thirds_and_replaced_at_max_ttl_never_used_expired() {
    let e = env().await;
    let auth = e
        .approle(AppRoleOptions {
            token_ttl: "3s".into(),
            token_max_ttl: "9s".into(),
            ..AppRoleOptions::default()
        })
        .await;
    let old = e.session().await;
    let server = e.server(&auth).await;
    let started = Instant::now();
    assert_eq!(wait_vault(&server, true).await["status"], "ready");

    // Past the first token's max TTL, while the watcher reads every 500 ms and /readyz
    // looks the token up every 100 ms: a use of an expired token would show.
    let deadline = started + Duration::from_secs(14);
    loop {
        server.readyz().await;
        let events = e.severs();
        let (logins, renewals) = (
            count(&events, "auth/approle/login"),
            count(&events, "auth/token/renew-self"),
        );
        if logins >= 2 && renewals >= 2 && started.elapsed() > Duration::from_millis(9500) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {:?}: {logins} logins, {renewals} renewals (want ≥ 2 each)",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = e.severs();
    // The re-login replaced a token that had been renewed: it came after renewals.
    let first_renewal = events
        .iter()
        .position(|e| e.path == "auth/token/renew-self")
        .unwrap();
    let last_login = events
        .iter()
        .rposition(|e| e.path == "auth/approle/login")
        .unwrap();
    assert!(first_renewal < last_login, "no re-login after renewing");
    assert!(
        count(&events, "database/static-roles/orders") >= 10,
        "the watcher should have read all along"
    );
    assert!(
        failures(&events).is_empty(),
        "OpenBao refused sever's requests (an expired token?): {:#?}",
        failures(&events)
    );

    e.rotation_ends(old, "made after the first token's max TTL")
        .await;
    assert!(failures(&e.severs()).is_empty());
    server.stop().await;
}

#[tokio::test]
async fn batch_approle_tokens_are_replaced_by_a_login_before_they_expire() {
    let e = env().await;
    let auth = e
        .approle(AppRoleOptions {
            token_ttl: "3s".into(),
            token_type: "batch".into(),
            ..AppRoleOptions::default()
        })
        .await;
    let old = e.session().await;
    let server = e.server(&auth).await;
    wait_vault(&server, true).await;
    // Two tokens' lifetimes and more.
    tokio::time::sleep(Duration::from_millis(7000)).await;
    let events = e.severs();
    assert!(
        count(&events, "auth/approle/login") >= 3,
        "{} logins in 7 s of 3 s batch tokens",
        count(&events, "auth/approle/login")
    );
    assert!(
        events.iter().all(|e| e.path != "auth/token/renew-self"),
        "a batch token cannot be renewed: sever must not try"
    );
    assert!(
        failures(&events).is_empty(),
        "OpenBao refused sever's requests (an expired token?): {:#?}",
        failures(&events)
    );
    e.rotation_ends(old, "with batch tokens").await;
    server.stop().await;
}

#[tokio::test]
async fn a_token_file_rewritten_by_an_agent_is_read_again_when_the_old_token_is_revoked() {
    let e = env().await;
    // Long-lived: sever would not re-read the file for 40 minutes on its own.
    let first = e.bao.create_token("", &token_options("1h", true)).await;
    let file = e.ws.path("vault.token");
    write_token(&file, &first.token);
    let old = e.session().await;
    let server = e.server(&token_auth(&file)).await;
    wait_vault(&server, true).await;

    let second = e.bao.create_token("", &token_options("1h", true)).await;
    write_token(&file, &second.token);
    e.bao.revoke_token("", &first.token).await;
    e.rotation_ends(
        old,
        "after the token file was rewritten and the old token revoked",
    )
    .await;
    assert_eq!(wait_vault(&server, true).await["status"], "ready");

    // The refusal made sever re-read the file; it has used only the new token since.
    let events = e.severs();
    let second_hash = e.bao.audit_hash(&second.token).await;
    let last_denied = events.iter().rposition(AuditEvent::denied);
    let after = &events[last_denied.map_or(0, |i| i + 1)..];
    assert!(
        after.iter().any(|e| e.client_token == second_hash),
        "sever never used the new token"
    );
    assert!(after.iter().all(|e| e.client_token == second_hash));
    server.stop().await;
}

#[tokio::test]
async fn a_token_file_is_read_again_before_its_token_expires() {
    let e = env().await;
    // Not renewable, 4 s: sever must re-read the file before it runs out.
    let first = e.bao.create_token("", &token_options("4s", false)).await;
    let expires = Instant::now() + Duration::from_secs(first.lease_duration);
    let file = e.ws.path("vault.token");
    write_token(&file, &first.token);
    let old = e.session().await;
    let server = e.server(&token_auth(&file)).await;
    wait_vault(&server, true).await;

    // The agent writes a new token and leaves the old one to expire.
    let second = e.bao.create_token("", &token_options("1h", false)).await;
    write_token(&file, &second.token);
    tokio::time::sleep_until((expires + Duration::from_millis(1500)).into()).await;

    let events = e.severs();
    let (first_hash, second_hash) = (
        e.bao.audit_hash(&first.token).await,
        e.bao.audit_hash(&second.token).await,
    );
    assert!(events.iter().any(|e| e.client_token == first_hash));
    assert!(
        events.iter().any(|e| e.client_token == second_hash),
        "sever did not read the rewritten file before the old token expired"
    );
    assert!(
        failures(&events).is_empty(),
        "OpenBao refused sever's requests (the expired token?): {:#?}",
        failures(&events)
    );
    e.rotation_ends(old, "after the old token expired").await;
    server.stop().await;
}

/// A sever with no targets against `address`, logging in with `auth`, trusting `ca_file`.
async fn sever_without_targets(
    address: &str,
    auth: &ConfigBuilder,
    ca_file: Option<PathBuf>,
) -> (TestServer, Workspace) {
    let ws = Workspace::new();
    let mut config = vault(ws.config(), address, auth);
    if let Some(ca) = ca_file {
        config = config.set("vault.tls.ca_file", ca.display().to_string());
    }
    let text = config.toml();
    (TestServer::start(&ws.write_config(&text)).await, ws)
}

/// Asserts `/readyz` shows Vault not ok, with an error naming `cause` (and more than reqwest's
/// bare "error sending request").
async fn assert_tls_failure(server: &TestServer, cause: &str) {
    let body = wait_vault(server, false).await;
    assert_eq!(body["status"], "degraded", "{body}");
    let error = body["vault"]["error"].as_str().unwrap_or_default();
    assert!(error.contains(cause), "wanted {cause:?} in {error:?}");
    assert!(
        error.contains("TLS handshake with Vault failed"),
        "the cause must be named, not only \"error sending request\": {error:?}"
    );
}

#[tokio::test]
async fn tls_works_with_the_ca_file_and_its_failures_are_named_in_readiness() {
    let ca = TestCa::new("another CA");
    let wrong_name = ca.issue(&["DNS:vault.elsewhere.example"], Validity::Current);
    let expired = ca.issue(&["IP:127.0.0.1"], Validity::Expired);
    let listener = |c: &sever_testkit::certs::IssuedCert| TlsListener {
        cert_pem: c.cert_pem.clone(),
        key_pem: c.key_pem.clone(),
    };
    let bao = TestBao::start_with(BaoOptions {
        tls: true,
        extra_listeners: vec![listener(&wrong_name), listener(&expired)],
    })
    .await;
    bao.write_policy("", "sever", POLICY).await.unwrap();
    let ws = Workspace::new();
    let auth = approle_auth(&ws, &bao, AppRoleOptions::default()).await;
    let start = |address: String, ca: Option<PathBuf>| {
        let auth = &auth;
        async move { sever_without_targets(&address, auth, ca).await }
    };

    let (server, _ws) = start(bao.addr(), Some(bao.ca_path())).await;
    assert_eq!(wait_vault(&server, true).await["status"], "ready");
    server.stop().await;

    let (server, _ws) = start(bao.addr(), None).await;
    assert_tls_failure(&server, "unknown CA").await;
    server.stop().await;

    let (server, _ws) = start(bao.extra_addr(0), Some(ca.cert_path())).await;
    assert_tls_failure(&server, "name mismatch").await;
    server.stop().await;

    let (server, _ws) = start(bao.extra_addr(1), Some(ca.cert_path())).await;
    assert_tls_failure(&server, "expired certificate").await;
    server.stop().await;
}

#[tokio::test]
async fn readiness_is_degraded_when_vault_refuses_the_token_or_cannot_be_reached() {
    let bao = TestBao::start().await;
    bao.write_policy("", "sever", POLICY).await.unwrap();
    let token = bao.create_token("", &token_options("1h", true)).await;
    let ws = Workspace::new();
    let file = ws.path("vault.token");
    write_token(&file, &token.token);
    let text = vault(ws.config(), &bao.addr(), &token_auth(&file)).toml();
    let server = TestServer::start(&ws.write_config(&text)).await;
    let body = wait_vault(&server, true).await;
    assert_eq!(body["status"], "ready", "{body}");

    // Revoked, and the file still holds it: nothing can replace it.
    bao.revoke_token("", &token.token).await;
    let body = wait_vault(&server, false).await;
    assert_eq!(body["status"], "degraded", "{body}");
    let error = body["vault"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("refuses sever's token"), "{error}");
    assert!(error.contains("403"), "{error}");

    // The agent writes a working token: the probe's refusal made sever read the file again.
    let fresh = bao.create_token("", &token_options("1h", true)).await;
    write_token(&file, &fresh.token);
    let body = wait_vault(&server, true).await;
    assert_eq!(body["status"], "ready", "{body}");

    // OpenBao goes away.
    bao.stop();
    let body = wait_vault(&server, false).await;
    assert_eq!(body["status"], "degraded", "{body}");
    let error = body["vault"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("connection refused"), "{error}");
    server.stop().await;
}
