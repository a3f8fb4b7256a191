//! sever's own logins on a real PostgreSQL that is both its store and its target, the common
//! set-up: the store's login cannot be mapped to a credential, a revocation of it leaves
//! sever's own store connections alone, and every connection sever opens says it is sever.

use crate::support::config::file;
use crate::support::sever::{TestServer, Workspace, cli, create_admin, stderr};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;

const STORE_PASSWORD: &str = "severstorepw";

/// One server holding both sever's store (database `sever_store`, owned by login
/// `sever_store`) and the target `main` (sever's admin login `sever_admin`).
async fn shared_server() -> TestPostgres {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("sever_store", STORE_PASSWORD).await;
    pg.exec("CREATE DATABASE sever_store OWNER sever_store")
        .await;
    pg.create_login("app", "pw").await;
    pg
}

/// The config: the store on `pg`, target `main` on `pg`, and `credentials` (the logins of
/// credential `c`, if any).
fn config(ws: &Workspace, pg: &TestPostgres, credentials: &[(&str, &str)]) -> std::path::PathBuf {
    let store = ws.secret_path(
        "store.url",
        &pg.url("sever_store", STORE_PASSWORD, "sever_store"),
    );
    let mut config = ws
        .target_config(ws.config(), "main", pg)
        .set("store.url", file(&store));
    if !credentials.is_empty() {
        config = config.credential("c", credentials);
    }
    ws.write_config(&config.toml())
}

/// (pid, application_name) of every session of `login`, by pid.
async fn sessions_of(pg: &TestPostgres, login: &str) -> Vec<(i32, String)> {
    let (mut conn, _) = pg.session("postgres", "", "postgres", "").await;
    sqlx::query_as(
        "SELECT pid, coalesce(application_name, '') FROM pg_stat_activity \
         WHERE usename = $1 ORDER BY pid",
    )
    .bind(login)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn check_config_refuses_a_credential_mapped_to_the_store_login_or_the_target_login() {
    let pg = shared_server().await;
    let ws = Workspace::new();
    let mapped = |login: &str| config(&ws, &pg, &[("main", login)]);

    let out = cli(&mapped("sever_store"), &["check-config"]);
    assert!(!out.status.success(), "the store's login was accepted");
    let err = stderr(&out);
    assert!(err.contains("credentials.c.logins[0].login"), "{err}");
    assert!(err.contains("the store's login"), "{err}");
    assert!(!err.contains(STORE_PASSWORD), "a secret was printed: {err}");

    let out = cli(&mapped("sever_admin"), &["check-config"]);
    assert!(!out.status.success(), "the target's own login was accepted");
    assert!(
        stderr(&out).contains("the target's own login"),
        "{}",
        stderr(&out)
    );

    let out = cli(&mapped("app"), &["check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test]
async fn a_revocation_of_the_store_login_spares_the_store_and_every_connection_is_named_sever() {
    let pg = shared_server().await;
    let ws = Workspace::new();
    let server = TestServer::start(&config(&ws, &pg, &[])).await;
    // Readiness writes to the store and reaches the target, so both pools hold connections.
    let (status, ready) = server.readyz().await;
    assert_eq!(status, StatusCode::OK, "{ready}");

    let store_sessions = sessions_of(&pg, "sever_store").await;
    assert!(
        !store_sessions.is_empty(),
        "the store pool holds no connection"
    );
    let target_sessions = sessions_of(&pg, "sever_admin").await;
    assert!(
        !target_sessions.is_empty(),
        "the target pool holds no connection"
    );
    for (pid, name) in store_sessions.iter().chain(&target_sessions) {
        assert_eq!(name, "sever", "session {pid} is not named sever");
    }

    // An operator revocation of the store's login (no config can map it): every one of its
    // sessions is reported and skipped as sever's own, none is signalled.
    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "sever_store", "targets": ["main"], "reason": "INC-6"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let t = &report["targets"][0];
    assert_eq!(report["status"], "completed", "{report}");
    assert!(t["terminated"].as_array().unwrap().is_empty(), "{t}");
    let skipped = t["skipped"].as_array().unwrap();
    assert!(!skipped.is_empty(), "{t}");
    assert!(
        skipped
            .iter()
            .all(|s| s["reason"] == "own_login" && s["login"] == "sever_store"),
        "{t}"
    );
    for (pid, _) in &store_sessions {
        assert!(pg.is_alive(*pid).await, "store session {pid} was ended");
    }
    let after: Vec<Value> = skipped.iter().map(|s| s["pid"].clone()).collect();
    for (pid, _) in &store_sessions {
        assert!(after.contains(&json!(pid)), "{pid} not reported in {t}");
    }

    // The store still takes writes: sever carries on.
    let (status, ready) = server.readyz().await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    server.stop().await;
}
