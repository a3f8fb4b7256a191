//! Which sessions a rotation ends: those older than the cutoff. The same scenario for every
//! engine (`rotation_ends_only_older_sessions`, from `support::scenarios`), and on PostgreSQL in
//! detail: a reported rotation time, the default cutoff (the moment of verification), what is
//! never ended (sever's own login, superusers, protected logins) and the audit of each session.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::mariadb::TestMariaDb;
use sever_testkit::pg::TestPostgres;
use sever_testkit::tds::TdsStandIn;

use super::engines::for_each_engine;
use crate::support::scenarios;
use crate::support::sever::{TestServer, Workspace, create_admin, db_now, pids};

const GONE: Duration = Duration::from_secs(5);

for_each_engine!(rotation_ends_only_older_sessions);

async fn sever_sessions(pg: &TestPostgres) -> i64 {
    let mut conn = pg.session("postgres", "", "postgres", "").await.0;
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'sever_admin' AND application_name = 'sever'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn rotation_terminates_only_sessions_older_than_the_cutoff() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    for (login, pw) in [("app", "old"), ("other", "pw"), ("ops", "pw")] {
        pg.create_login(login, pw).await;
    }
    pg.exec("CREATE ROLE su LOGIN SUPERUSER PASSWORD 'pw'")
        .await;

    let ws = Workspace::new();
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .set("targets.main.protected_logins", vec!["ops"])
        .credential("orders", &[("main", "app")])
        .set("credentials.misconfigured.policy", "terminate_all")
        .credential("misconfigured", &[("main", "sever_admin"), ("main", "su")])
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;

    let old = pg.open_sessions("app", "old", 3).await;
    let other = pg.open_sessions("other", "pw", 1).await;
    let ops = pg.open_sessions("ops", "pw", 1).await;
    let su = pg.open_sessions("su", "pw", 1).await;

    // The rotation: the password changes at a moment the database itself records.
    let (mut admin, _) = pg.session("postgres", "", "postgres", "rotator").await;
    sqlx::query("ALTER ROLE app PASSWORD 'new'")
        .execute(&mut admin)
        .await
        .unwrap();
    let rotated_at = db_now(&mut admin).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let newer = pg.open_sessions("app", "new", 2).await;

    let (status, report) = server
        .event(&json!({"credential": "orders", "kind": "rotated", "rotated_at": rotated_at, "reason": "scheduled"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    let mut expected: Vec<i64> = old.iter().map(|p| i64::from(*p)).collect();
    expected.sort();
    assert_eq!(pids(&report, "main", "terminated"), expected);
    assert_eq!(pids(&report, "main", "remaining"), Vec::<i64>::new());
    assert_eq!(report["targets"][0]["found"], 3);

    for pid in &old {
        assert!(pg.wait_gone(*pid, GONE).await, "old session {pid} survived");
    }
    for pid in newer.iter().chain(&other).chain(&ops).chain(&su) {
        assert!(
            pg.is_alive(*pid).await,
            "session {pid} should have survived"
        );
    }
    assert!(
        sever_sessions(&pg).await >= 1,
        "sever's own connection must survive"
    );

    // A credential mapped (wrongly) to sever's own login and a superuser: both left alone, and said so.
    let (status, report) = server
        .event(&json!({"credential": "misconfigured", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let reasons: Vec<&str> = report["targets"][0]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"own_login"), "{report}");
    assert!(reasons.contains(&"superuser"), "{report}");
    assert_eq!(pids(&report, "main", "terminated"), Vec::<i64>::new());
    assert!(pg.is_alive(su[0]).await);
    assert!(sever_sessions(&pg).await >= 1);

    // The audit trail has every step, each terminated session with its details, and verifies.
    server.stop().await;
    let audit = ws.audit().await;
    let records = audit.list(&Default::default()).await.unwrap();
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    for kind in [
        "event.accepted",
        "action.planned",
        "session.terminated",
        "session.skipped",
        "action.completed",
    ] {
        assert!(kinds.contains(&kind), "no {kind} record in {kinds:?}");
    }
    let terminated: Vec<Value> = records
        .iter()
        .filter(|r| r.kind == "session.terminated")
        .map(|r| serde_json::from_str(&r.detail).unwrap())
        .collect();
    assert_eq!(terminated.len(), 3);
    for d in &terminated {
        assert_eq!(d["login"], "app");
        assert_eq!(d["target"], "main");
        assert_eq!(d["application_name"], "orders-api");
        assert_eq!(d["database"], "postgres");
        assert_eq!(d["client_addr"], "127.0.0.1");
        assert!(d["backend_start"].is_string());
        assert!(old.contains(&(d["pid"].as_i64().unwrap() as i32)));
    }
    let report = audit.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
}

#[tokio::test]
async fn default_cutoff_is_the_moment_of_verification_and_202_is_the_default() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .credential("orders", &[("main", "app")])
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let before = pg.open_sessions("app", "pw", 2).await;

    let body = serde_json::to_vec(&json!({"credential": "orders", "kind": "rotated"})).unwrap();
    let r = server
        .post_signed(
            "/v1/events",
            &body,
            "msg_default_cutoff",
            crate::support::sever::now(),
            crate::support::sever::SECRET,
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let accepted: Value = r.json().await.unwrap();
    assert_eq!(accepted["status"], "accepted");
    let action_id = accepted["action_id"].as_str().unwrap().to_owned();
    for pid in &before {
        assert!(
            pg.wait_gone(*pid, GONE).await,
            "session {pid} predates the event and must end"
        );
    }
    let after = pg.open_sessions("app", "pw", 1).await;
    server.stop().await; // waits for the action to finish
    assert!(pg.is_alive(after[0]).await);
    let audit = ws.audit().await;
    let records = audit
        .list(&sever::audit::ListFilter {
            action_id: Some(action_id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(records.last().unwrap().kind, "action.completed");
    assert_eq!(
        records
            .iter()
            .filter(|r| r.kind == "session.terminated")
            .count(),
        2
    );
}
