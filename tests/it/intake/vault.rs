//! What OpenBao cannot run, against the Vault stand-in in `tests/kit/src/vault.rs`, a real
//! PostgreSQL and the real server: the events websocket subscriber (Vault Enterprise),
//! Kubernetes auth, `rotation_schedule` roles (OpenBao has only `rotation_period`), and the
//! envelope and signature checks of forwarded events (no Vault needed). Everything else Vault
//! does is tested against a real OpenBao: the watcher, watched mounts, forwarded rotations,
//! kv-v2 and namespaces in `tests/openbao_flows.rs`, missing mounts and roles in
//! `tests/openbao_missing.rs`, AppRole and token logins, renewal and revoked tokens in the
//! OpenBao auth tests.

use std::time::Duration;

use crate::support::config::file;
use crate::support::sever::{
    SECRET, TestServer, WRONG_SECRET, Workspace, create_admin, now, pids, sorted,
};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;
use sever_testkit::vault::{Rotation, VaultStandIn};

const GONE: Duration = Duration::from_secs(5);

/// What Vault does on rotation: a new password in the database, at a moment the database
/// itself records, which becomes the static role's `last_vault_rotation`.
async fn rotate(pg: &TestPostgres, login: &str, password: &str) -> DateTime<Utc> {
    let (mut admin, _) = pg.session("postgres", "", "postgres", "").await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE {login} PASSWORD '{password}'"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

struct Env {
    pg: TestPostgres,
    vault: VaultStandIn,
    ws: Workspace,
    config: std::path::PathBuf,
}

/// PostgreSQL with `logins`, the Vault stand-in accepting sever's AppRole, and a config
/// with `[vault]` (plus `vault_extra`) and `credentials`.
async fn env(logins: &[&str], vault_extra: &str, credentials: &str) -> Env {
    env_with_auth(logins, None, vault_extra, credentials).await
}

/// As [`env`]; `kubernetes` logs in with a service-account token file instead of AppRole.
async fn env_with_auth(
    logins: &[&str],
    kubernetes: Option<&str>,
    vault_extra: &str,
    credentials: &str,
) -> Env {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    for login in logins {
        pg.create_login(login, "pw0").await;
    }
    let vault = VaultStandIn::start().await;
    vault.allow_approle("approle", "sever-role-id", "sever-secret-id");
    let ws = Workspace::new();
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .set("vault.address", vault.address());
    let config = match kubernetes {
        None => config
            .set("vault.auth.method", "approle")
            .set("vault.auth.role_id", "sever-role-id")
            .set(
                "vault.auth.secret_id",
                file(&ws.secret_path("vault.secret-id", "sever-secret-id")),
            ),
        Some(jwt) => {
            vault.allow_kubernetes("kubernetes", "sever", jwt);
            config
                .set("vault.auth.method", "kubernetes")
                .set("vault.auth.role", "sever")
                .set("vault.auth.jwt_file", ws.secret_path("sa.jwt", jwt))
        }
    };
    // `vault_extra` follows `[vault.auth]`, as its keys would in a hand-written file.
    let text = config
        .merge_toml(&format!("[vault.auth]\n{vault_extra}\n"))
        .merge_toml(credentials)
        .toml();
    let config = ws.write_config(&text);
    Env {
        pg,
        vault,
        ws,
        config,
    }
}

impl Env {
    async fn server(&self) -> TestServer {
        TestServer::start(&self.config).await
    }

    async fn records(&self, kind: &str) -> Vec<Value> {
        self.ws.records(kind).await
    }
}

async fn forward(server: &TestServer, event: &Value, secret: &str) -> (StatusCode, Value) {
    let body = serde_json::to_vec(event).unwrap();
    let id = format!("vault_{}", uuid::Uuid::now_v7().simple());
    let r = server
        .post_signed("/v1/events/vault?wait=true", &body, &id, now(), secret)
        .await;
    (r.status(), r.json().await.unwrap())
}

fn rotate_event(mount: &str, role: &str, namespace: Option<&str>) -> Value {
    VaultStandIn::event(
        "database/rotate",
        &format!("{mount}/"),
        "database",
        json!({"name": role, "operation": "rotate", "modified": "true", "path": format!("{mount}/rotate-role/{role}")}),
        namespace,
    )
}

const ORDERS: &str = "[credentials.orders]\n[credentials.orders.vault]\nmount = \"database\"\nrole = \"orders\"\ntarget = \"main\"\n";

#[tokio::test]
async fn schedule_roles_unmatched_kv_paths_and_mismatched_mounts_or_namespaces() {
    let credentials = format!(
        "{ORDERS}[credentials.legacy]\nlogins = [{{ target = \"main\", login = \"legacy_app\" }}]\n\
         [credentials.legacy.vault]\nmount = \"secret\"\nkv_path = \"apps/legacy/db\"\n"
    );
    let e = env(&["orders_app", "legacy_app"], "", &credentials).await;
    let server = e.server().await;

    // A rotation_schedule role (vaultrs's own type would refuse it).
    let old = e.pg.open_sessions("orders_app", "pw0", 1).await;
    let rotated = rotate(&e.pg, "orders_app", "pw1").await;
    let schedule = Rotation::Schedule {
        schedule: "0 * * * SAT".into(),
        window: 3600,
    };
    e.vault.set_static_role(
        "",
        "database",
        "orders",
        "orders_app",
        "main-db",
        rotated,
        schedule,
    );
    // The same role name on another mount, or in a namespace, is a different credential.
    let (status, body) = forward(
        &server,
        &rotate_event("database-eu", "orders", None),
        SECRET,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ignored")),
        "{body}"
    );
    let (status, body) = forward(
        &server,
        &rotate_event("database", "orders", Some("team-a")),
        SECRET,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ignored")),
        "{body}"
    );
    assert!(e.pg.is_alive(old[0]).await);
    let (status, report) =
        forward(&server, &rotate_event("database", "orders", None), SECRET).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&old));

    // kv-v2 (the matched case is resolved against real kv metadata in tests/openbao_*.rs).
    let kv = VaultStandIn::event(
        "kv-v2/data-write",
        "secret/",
        "kv",
        json!({"data_path": "secret/data/apps/legacy/db", "path": "secret/data/apps/legacy/db",
               "current_version": "2", "oldest_version": "1", "modified": "true", "operation": "data-write"}),
        None,
    );
    // Another KV path: ignored. A failed rotation: acknowledged, nothing terminated.
    let mut other = kv.clone();
    other["data"]["event"]["metadata"]["data_path"] = json!("secret/data/apps/other");
    let (status, body) = forward(&server, &other, SECRET).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ignored")),
        "{body}"
    );
    let mut failed = rotate_event("database", "orders", None);
    failed["data"]["event_type"] = json!("database/rotate-fail");
    failed["type"] = json!("database/rotate-fail");
    let (status, body) = forward(&server, &failed, SECRET).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("acknowledged")),
        "{body}"
    );

    assert_eq!(e.records("event.ignored").await.len(), 3);
    assert_eq!(e.records("event.acknowledged").await.len(), 1);
    assert_eq!(e.records("action.planned").await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn bad_signatures_and_malformed_envelopes_are_refused_and_audited() {
    let e = env(&["orders_app"], "", ORDERS).await;
    let server = e.server().await;
    let alive = e.pg.open_sessions("orders_app", "pw0", 1).await;
    e.vault.set_static_role(
        "",
        "database",
        "orders",
        "orders_app",
        "main-db",
        Utc::now(),
        Rotation::Period(60),
    );

    let (status, body) = forward(
        &server,
        &rotate_event("database", "orders", None),
        WRONG_SECRET,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_signature"))
    );
    let (status, body) = forward(
        &server,
        &json!({"type": "database/rotate", "data": {}}),
        SECRET,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")),
        "{body}"
    );
    let mut nameless = rotate_event("database", "orders", None);
    nameless["data"]["event"]["metadata"] = json!({});
    let (status, body) = forward(&server, &nameless, SECRET).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")),
        "{body}"
    );

    let codes: Vec<String> = e
        .records("request.rejected")
        .await
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        codes,
        ["invalid_signature", "invalid_request", "invalid_request"]
    );
    assert!(e.records("action.planned").await.is_empty());
    assert!(e.pg.is_alive(alive[0]).await);
    server.stop().await;
}

#[tokio::test]
async fn the_subscriber_receives_rotations_and_reconnects_after_vault_drops_it() {
    let subscriber = "[vault.subscriber]\nenabled = true\nevent_types = [\"database/*\"]\n";
    let e = env(&["orders_app"], subscriber, ORDERS).await;
    let server = e.server().await;
    e.vault.wait_for_subscribers(1).await;
    let ready: Value = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["vault_subscriber"]["database/*"]["connected"], true,
        "{ready}"
    );

    for round in 1..=2 {
        let old =
            e.pg.open_sessions("orders_app", &format!("pw{}", round - 1), 1)
                .await;
        let rotated = rotate(&e.pg, "orders_app", &format!("pw{round}")).await;
        e.vault.set_static_role(
            "",
            "database",
            "orders",
            "orders_app",
            "main-db",
            rotated,
            Rotation::Period(60),
        );
        e.vault.publish(&rotate_event("database", "orders", None));
        assert!(
            e.pg.wait_gone(old[0], GONE).await,
            "round {round}: the event did not end the old session"
        );
        if round == 1 {
            e.vault.drop_subscribers();
            e.vault.wait_for_subscribers(1).await;
        }
    }
    let planned = e.records("action.planned").await;
    assert_eq!(planned.len(), 2);
    assert!(planned.iter().all(|p| p["source"] == "subscriber"));
    let ready: Value = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ready["vault_subscriber"]["database/*"]["reconnects"]
            .as_u64()
            .unwrap()
            >= 1,
        "{ready}"
    );
    server.stop().await;
}

#[tokio::test]
async fn kubernetes_auth_logs_in_with_the_service_account_token() {
    let e = env_with_auth(&["orders_app"], Some("eyJhbGciOi.sa-token.sig"), "", ORDERS).await;
    let server = e.server().await;
    let old = e.pg.open_sessions("orders_app", "pw0", 1).await;
    let rotated = rotate(&e.pg, "orders_app", "pw1").await;
    e.vault.set_static_role(
        "",
        "database",
        "orders",
        "orders_app",
        "main-db",
        rotated,
        Rotation::Period(60),
    );
    let (status, report) =
        forward(&server, &rotate_event("database", "orders", None), SECRET).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&old));
    assert!(
        e.vault
            .requests()
            .iter()
            .any(|r| r.method == "POST" && r.path == "/v1/auth/kubernetes/login")
    );
    server.stop().await;
}
