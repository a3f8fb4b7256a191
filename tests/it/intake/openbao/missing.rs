//! Issue 15, point 4, against a REAL OpenBao 2.7.2: a watched mount or a credential's static
//! role that does not exist (or that sever's token may not read) is logged and shown in
//! `/readyz` (`vault` component, status `degraded`) at start and on every watcher pass;
//! sever still starts, and creating the mount or role later clears it. An existing mount
//! without static roles is not an error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::sever::{TestServer, Workspace, create_admin};
use serde_json::Value;
use sever_testkit::openbao::{TestBao, TokenOptions};
use sever_testkit::pg::TestPostgres;

const POLICY: &str = include_str!("../../../../integrations/vault/sever-policy-openbao.hcl");
const ORDERS: &str = "[credentials.orders]\n[credentials.orders.vault]\nmount = \"database\"\nrole = \"orders\"\ntarget = \"main\"\n";

/// PostgreSQL (target `main`) and OpenBao with the database engine at `database/` (no roles).
async fn start() -> (TestPostgres, TestBao, Workspace) {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    let bao = TestBao::start().await;
    bao.enable_database("", "database", &pg).await;
    pg.create_login("orders_app", "initial").await;
    (pg, bao, Workspace::new())
}

/// The config: `[vault]` at `bao` logging in with `token`, then `extra`.
fn config(ws: &Workspace, pg: &TestPostgres, bao: &TestBao, token: &str, extra: &str) -> PathBuf {
    let config = ws.target_config(ws.config(), "main", pg);
    let config = ws
        .vault_token(config, &bao.addr(), token)
        .merge_toml(&format!("[vault.auth]\n{extra}"));
    ws.write_config(&config.toml())
}

/// Polls `/readyz` (bounded) until `done` holds for its body; returns that body.
async fn wait_ready(server: &TestServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (status, body) = server.readyz().await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never showed {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn vault_error(body: &Value) -> &str {
    body["vault"]["error"].as_str().unwrap_or_default()
}

fn is_ready(body: &Value) -> bool {
    body["status"] == "ready" && body["vault"]["ok"] == true
}

#[tokio::test]
async fn a_mistyped_watched_mount_and_a_missing_role_degrade_readiness_until_they_exist() {
    let (pg, bao, ws) = start().await;
    bao.enable_database("", "empty", &pg).await;
    let watch = "[vault.watcher]\ninterval = \"200ms\"\n\
                 [[vault.watcher.mounts]]\nmount = \"databse\"\ntarget = \"main\"\n\
                 [[vault.watcher.mounts]]\nmount = \"empty\"\ntarget = \"main\"\n";
    let server =
        TestServer::start(&config(&ws, &pg, &bao, "root", &format!("{watch}{ORDERS}"))).await;

    // Both problems, each named; the empty mount is fine. sever serves all the while.
    let body = wait_ready(&server, "both problems", |b| {
        vault_error(b).contains("databse") && vault_error(b).contains("orders")
    })
    .await;
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["vault"]["ok"], false, "{body}");
    let error = vault_error(&body);
    assert!(
        error.contains("mount \"databse\" does not exist"),
        "{error}"
    );
    assert!(error.contains("credential \"orders\""), "{error}");
    assert!(
        error.contains("static role \"orders\" does not exist"),
        "{error}"
    );
    assert!(
        !error.contains("empty"),
        "an empty mount is not an error: {error}"
    );

    // Fixed in OpenBao: the next pass clears each, and the role is then watched.
    bao.create_static_role("", "database", "orders", "orders_app", "1h")
        .await;
    let body = wait_ready(&server, "the role cleared", |b| {
        !vault_error(b).contains("orders")
    })
    .await;
    assert!(vault_error(&body).contains("databse"), "{body}");
    bao.enable_database("", "databse", &pg).await;
    wait_ready(&server, "ready", is_ready).await;
    let planned = ws.records("action.planned").await;
    assert!(
        planned.iter().any(|p| p["vault_path"] == "database/orders"),
        "{planned:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn with_the_shipped_policy_a_mistyped_mount_is_refused_and_still_named() {
    let (pg, bao, ws) = start().await;
    bao.write_policy("", "sever", POLICY).await.unwrap();
    let options = TokenOptions {
        policies: vec!["sever".into()],
        ttl: "1h".into(),
        no_default_policy: true,
        ..TokenOptions::default()
    };
    let token = bao.create_token("", &options).await.token;
    // The policy names `database/`: OpenBao answers 403 for `databse/`, not 404.
    let (status, _) = bao
        .request(&token, "", "LIST", "databse/static-roles", None)
        .await;
    assert_eq!(status, 403);
    let watch = "[vault.watcher]\ninterval = \"200ms\"\n\
                 [[vault.watcher.mounts]]\nmount = \"databse\"\ntarget = \"main\"\n";
    let server =
        TestServer::start(&config(&ws, &pg, &bao, &token, &format!("{watch}{ORDERS}"))).await;

    let body = wait_ready(&server, "both problems", |b| {
        vault_error(b).contains("databse") && vault_error(b).contains("orders")
    })
    .await;
    assert_eq!(body["status"], "degraded", "{body}");
    let error = vault_error(&body);
    assert!(
        error.contains("policy"),
        "the refusal names the policy as a cause: {error}"
    );
    assert!(
        error.contains("static role \"orders\" does not exist"),
        "{error}"
    );
    // The token itself is fine: no token complaint.
    assert!(!error.contains("refuses sever's token"), "{error}");

    bao.create_static_role("", "database", "orders", "orders_app", "1h")
        .await;
    let body = wait_ready(&server, "the role cleared", |b| {
        !vault_error(b).contains("orders")
    })
    .await;
    assert!(vault_error(&body).contains("databse"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn without_a_watcher_a_missing_role_is_reported_at_start_and_cleared_once_created() {
    let (pg, bao, ws) = start().await;
    let server = TestServer::start(&config(&ws, &pg, &bao, "root", ORDERS)).await;
    let body = wait_ready(&server, "the missing role", |b| {
        vault_error(b).contains("orders")
    })
    .await;
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(
        vault_error(&body).contains("static role \"orders\" does not exist"),
        "{body}"
    );

    bao.create_static_role("", "database", "orders", "orders_app", "1h")
        .await;
    // Re-checked every 5 s until it reads back.
    wait_ready(&server, "ready", is_ready).await;
    server.stop().await;
}
