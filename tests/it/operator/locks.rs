//! Login locks through the real server against a real PostgreSQL: a lock ends the login's
//! sessions and refuses its new connections, its scheduled expiry lets it back in exactly as
//! it was (also after a restart, also past `queue.retry_for`, once across two replicas), and
//! overlapping locks restore only when the last one ends.

use std::time::Duration;

use crate::support::config::ConfigBuilder;
use crate::support::sever::{TestServer, Workspace, create_admin, pids};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;
use sqlx::{Connection, PgConnection};

const GONE: Duration = Duration::from_secs(5);

/// A target `main` with locks on; sever's admin login may change roles.
async fn locking(pg: &TestPostgres, ws: &Workspace) -> ConfigBuilder {
    create_admin(pg).await;
    pg.exec("ALTER ROLE sever_admin CREATEROLE").await;
    ws.target_config(ws.config(), "main", pg)
        .set("targets.main.locks", true)
        .set("queue.poll_interval", "100ms")
}

async fn can_log_in(pg: &TestPostgres, login: &str) -> bool {
    PgConnection::connect(&pg.url(login, "pw", "postgres"))
        .await
        .is_ok()
}

/// Waits until `login` can (or cannot) log in, up to `within`.
async fn wait_login(pg: &TestPostgres, login: &str, allowed: bool, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if can_log_in(pg, login).await == allowed {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn rolcanlogin(pg: &TestPostgres, login: &str) -> bool {
    let mut conn = pg.session("postgres", "", "postgres", "").await.0;
    sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(login)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn lock_id(report: &Value) -> String {
    report["action_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no action_id in {report}"))
        .to_owned()
}

#[tokio::test]
async fn a_lock_ends_sessions_refuses_logins_and_its_expiry_lets_the_login_back_in() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    // The expiry is due after retry_for has long passed since the lock was accepted.
    let config = locking(&pg, &ws).await.set("queue.retry_for", "1s").toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    pg.create_login("leaked", "pw").await;
    pg.create_login("bystander", "pw").await;
    let sessions = pg.open_sessions("leaked", "pw", 2).await;
    let bystander = pg.open_sessions("bystander", "pw", 1).await;

    let (status, report) = server
        .operator_post(
            "/v1/locks",
            &json!({"login": "leaked", "targets": ["main"], "reason": "INC-19", "for": "3s"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    let mut expected: Vec<i64> = sessions.iter().map(|p| i64::from(*p)).collect();
    expected.sort();
    assert_eq!(pids(&report, "main", "terminated"), expected);
    for pid in &sessions {
        assert!(pg.wait_gone(*pid, GONE).await);
    }
    assert!(pg.is_alive(bystander[0]).await);
    assert!(
        !can_log_in(&pg, "leaked").await,
        "the right password is refused while locked"
    );
    assert!(can_log_in(&pg, "bystander").await);

    let (status, listed) = server.operator_get("/v1/locks").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let listed = listed.as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["lock_id"], lock_id(&report));
    assert_eq!(listed[0]["login"], "leaked");
    assert_eq!(listed[0]["reason"], "INC-19");
    assert!(listed[0]["until"].is_string());

    assert!(
        wait_login(&pg, "leaked", true, Duration::from_secs(8)).await,
        "the expiry lets the login back in"
    );
    let (_, listed) = server.operator_get("/v1/locks").await;
    assert_eq!(listed, json!([]), "no lock is active after its expiry");
    let (_, all) = server.operator_get("/v1/locks?all=true").await;
    assert_eq!(all[0]["ended_by"], "expiry", "{all}");
    let (status, ready) = server.readyz().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["locks"]["ok"], true, "{ready}");
}

#[tokio::test]
async fn overlapping_locks_restore_when_the_last_ends_and_nologin_stays_nologin() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = locking(&pg, &ws).await.toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    pg.create_login("app", "pw").await;
    pg.exec("CREATE ROLE batch NOLOGIN PASSWORD 'pw'").await;
    let lock = |login: &str| {
        let body = json!({"login": login, "targets": ["main"], "reason": "r", "for": "10m"});
        let server = &server;
        async move {
            let (status, report) = server.operator_post("/v1/locks", &body).await;
            assert_eq!(status, StatusCode::OK, "{report}");
            assert_eq!(report["status"], "completed", "{report}");
            lock_id(&report)
        }
    };
    let lift = |id: String| {
        let server = &server;
        async move {
            let r = server
                .client
                .delete(server.operator_url(&format!("/v1/locks/{id}?reason=done")))
                .bearer_auth(crate::support::sever::TOKEN)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }
    };
    let first = lock("app").await;
    let second = lock("app").await;
    assert!(!can_log_in(&pg, "app").await);
    let (status, body) = lift(first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.to_string().contains("stays locked"), "{body}");
    assert!(
        !can_log_in(&pg, "app").await,
        "the second lock is still in force"
    );
    let (status, body) = lift(second).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        can_log_in(&pg, "app").await,
        "restored once the last lock ended"
    );
    let (status, body) = lift(first).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // A role that could not log in before the lock cannot after it either.
    let id = lock("batch").await;
    assert!(!rolcanlogin(&pg, "batch").await);
    let (status, body) = lift(id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !rolcanlogin(&pg, "batch").await,
        "NOLOGIN before, NOLOGIN after"
    );
}

#[tokio::test]
async fn an_expiry_runs_after_a_restart_and_once_across_two_replicas() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = ws.write_config(&locking(&pg, &ws).await.toml());
    pg.create_login("app", "pw").await;
    let server = TestServer::start(&config).await;
    let (status, report) = server
        .operator_post(
            "/v1/locks",
            &json!({"login": "app", "targets": ["main"], "reason": "r", "for": "2s",
                    "terminate": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(!can_log_in(&pg, "app").await);
    // sever is down when the lock expires; two replicas come up on the same store.
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !can_log_in(&pg, "app").await,
        "nothing lifted it while sever was down"
    );
    let a = TestServer::start(&config).await;
    let b = TestServer::start(&config).await;
    if !wait_login(&pg, "app", true, Duration::from_secs(8)).await {
        let (_, ready) = a.readyz().await;
        let (_, locks) = a.operator_get("/v1/locks?all=true").await;
        let planned = ws.records("action.planned").await;
        let completed = ws.records("action.completed").await;
        panic!("not restored: {ready}\n{locks}\n{planned:?}\n{completed:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restored: Vec<Value> = ws
        .records("action.completed")
        .await
        .into_iter()
        .filter(|r| r.to_string().contains("restored"))
        .collect();
    assert_eq!(
        restored.len(),
        1,
        "one restore across replicas: {restored:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn guard_rails_refuse_a_lock_before_anything_changes() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = locking(&pg, &ws)
        .await
        .target_postgres(
            "plain",
            &ws.secret_path(
                "plain.url",
                &pg.url(
                    "sever_admin",
                    crate::support::sever::ADMIN_PASSWORD,
                    "postgres",
                ),
            ),
        )
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    pg.create_login("app", "pw").await;
    for (body, needle) in [
        (
            json!({"login": "app", "targets": ["main"], "reason": "r"}),
            "permanent",
        ),
        (
            json!({"login": "app", "targets": ["main"], "reason": "r", "for": "1m", "permanent": true}),
            "not both",
        ),
        (
            json!({"login": "app", "targets": ["plain"], "reason": "r", "for": "1m"}),
            "locks = true",
        ),
        (
            json!({"login": "postgres", "targets": ["main"], "reason": "r", "for": "1m"}),
            "protected",
        ),
        (
            json!({"login": "sever_admin", "targets": ["main"], "reason": "r", "for": "1m"}),
            "own login",
        ),
        (
            json!({"login": "app", "targets": ["main"], "reason": " ", "for": "1m"}),
            "reason",
        ),
        (
            json!({"login": "app", "targets": ["main"], "reason": "r", "for": "1m", "lock": 1}),
            "lock",
        ),
    ] {
        let (status, answer) = server.operator_post("/v1/locks", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(answer.to_string().contains(needle), "{body}: {answer}");
    }
    assert!(can_log_in(&pg, "app").await);
    assert_eq!(
        ws.records("action.planned").await.len(),
        0,
        "nothing was planned"
    );
}

#[tokio::test]
async fn a_restore_that_fails_is_retried_and_named_in_readiness_until_it_succeeds() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    // Retrying is given up after a second for other steps: never for a restore.
    let config = locking(&pg, &ws)
        .await
        .set("queue.retry_for", "1s")
        .set("queue.max_backoff", "500ms")
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    pg.create_login("app", "pw").await;
    let (status, report) = server
        .operator_post(
            "/v1/locks",
            &json!({"login": "app", "targets": ["main"], "reason": "r", "for": "1s",
                    "terminate": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    // The target is down when the lock expires.
    pg.stop();
    let mut named = Value::Null;
    for _ in 0..100 {
        let (_, ready) = server.readyz().await;
        if ready["locks"]["ok"] == false {
            named = ready;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(named["status"], "degraded", "{named}");
    assert!(
        named["locks"]["error"].to_string().contains("app"),
        "{named}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.restart();
    assert!(
        wait_login(&pg, "app", true, Duration::from_secs(10)).await,
        "restored once the target is back, past retry_for"
    );
    let mut ready = Value::Null;
    for _ in 0..50 {
        ready = server.readyz().await.1;
        if ready["locks"]["ok"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready["locks"]["ok"], true, "{ready}");
    // Loud: target.failed at its first failure (and every tenth), yet retried until it worked.
    let failed = ws.records("target.failed").await;
    assert!(!failed.is_empty(), "its failure is in the trail");
    assert_eq!(failed[0]["retrying"], "until it succeeds", "{failed:?}");
}

#[tokio::test]
async fn a_rotation_lifts_a_lock_only_where_its_credential_says_so() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = locking(&pg, &ws)
        .await
        .credential("lifting", &[("main", "app")])
        .set("credentials.lifting.lift_locks", true)
        .credential("keeping", &[("main", "ops_app")])
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    pg.create_login("app", "pw").await;
    pg.create_login("ops_app", "pw").await;
    for login in ["app", "ops_app"] {
        let (status, report) = server
            .operator_post(
                "/v1/locks",
                &json!({"login": login, "targets": ["main"], "reason": "r", "for": "10m"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{report}");
    }
    // A revocation never lifts a lock.
    let (status, report) = server
        .event(&json!({"credential": "lifting", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!can_log_in(&pg, "app").await);
    for credential in ["lifting", "keeping"] {
        let (status, report) = server
            .event(&json!({"credential": credential, "kind": "rotated"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{report}");
    }
    assert!(
        wait_login(&pg, "app", true, Duration::from_secs(5)).await,
        "the rotation of a credential with lift_locks lifts its lock"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !can_log_in(&pg, "ops_app").await,
        "without lift_locks the lock stays"
    );
    let (_, all) = server.operator_get("/v1/locks?all=true").await;
    let ended: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["state"] == "ended")
        .collect();
    assert_eq!(ended.len(), 1, "{all}");
    assert_eq!(ended[0]["ended_by"], "rotation of credential lifting");
}

#[tokio::test]
async fn a_lock_sever_may_not_take_is_refused_naming_the_grant() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    let ws = Workspace::new();
    // Locks enabled, but sever's login lacks CREATEROLE.
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .set("targets.main.locks", true)
        .set("queue.retry_for", "1s")
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    pg.create_login("app", "pw").await;
    let (status, report) = server
        .operator_post(
            "/v1/locks",
            &json!({"login": "app", "targets": ["main"], "reason": "r", "for": "10m"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{report}");
    assert!(report.to_string().contains("CREATEROLE"), "{report}");
    assert_eq!(
        ws.records("action.planned").await.len(),
        0,
        "nothing was planned"
    );
    assert!(can_log_in(&pg, "app").await);
    let (_, active) = server.operator_get("/v1/locks").await;
    assert_eq!(
        active,
        json!([]),
        "a lock that closed nothing is not in force"
    );
    let (_, ready) = server.readyz().await;
    assert_eq!(ready["locks"]["ok"], true, "{ready}");
}

#[tokio::test]
async fn a_superuser_is_never_locked() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = locking(&pg, &ws).await.set("queue.retry_for", "1s").toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    pg.exec("CREATE ROLE boss SUPERUSER LOGIN PASSWORD 'pw'")
        .await;
    let (status, report) = server
        .operator_post(
            "/v1/locks",
            &json!({"login": "boss", "targets": ["main"], "reason": "r", "for": "10m"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "incomplete", "{report}");
    assert!(
        report.to_string().contains("never locks superusers"),
        "{report}"
    );
    assert!(rolcanlogin(&pg, "boss").await);
    let (_, active) = server.operator_get("/v1/locks").await;
    assert_eq!(active, json!([]));
}

#[tokio::test]
async fn locks_stack_expire_and_lift_on_a_postgresql_store() {
    use crate::support::config::file;
    let pg = TestPostgres::start();
    pg.exec("CREATE ROLE sever_store LOGIN PASSWORD 'storepw'")
        .await;
    pg.exec("CREATE DATABASE sever_store OWNER sever_store")
        .await;
    let ws = Workspace::new();
    let store = pg.url("sever_store", "storepw", "sever_store");
    let config = locking(&pg, &ws)
        .await
        .set("store.url", file(&ws.secret_path("store.url", &store)))
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    pg.create_login("app", "pw").await;
    let take = |duration: &str| {
        let body = json!({"login": "app", "targets": ["main"], "reason": "r", "for": duration});
        let server = &server;
        async move {
            let (status, report) = server.operator_post("/v1/locks", &body).await;
            assert_eq!(status, StatusCode::OK, "{report}");
            lock_id(&report)
        }
    };
    let long = take("10m").await;
    let _short = take("1s").await;
    let (_, active) = server.operator_get("/v1/locks").await;
    assert_eq!(active.as_array().unwrap().len(), 2, "{active}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, active) = server.operator_get("/v1/locks").await;
    assert_eq!(
        active.as_array().unwrap().len(),
        1,
        "the short one expired: {active}"
    );
    assert!(!can_log_in(&pg, "app").await, "the long lock still holds");
    let r = server
        .client
        .delete(server.operator_url(&format!("/v1/locks/{long}?reason=done")))
        .bearer_auth(crate::support::sever::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(can_log_in(&pg, "app").await);
    let (_, ready) = server.readyz().await;
    assert_eq!(ready["locks"]["ok"], true, "{ready}");
    // The action list's filters work on a PostgreSQL store too.
    let (status, page) = server
        .operator_get("/v1/actions?origin=lock&status=completed&limit=1")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["actions"].as_array().unwrap().len(), 1, "{page}");
    assert!(page["next"].is_string(), "two locks, pages of one: {page}");
}
