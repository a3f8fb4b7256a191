//! What only the SQL Server engine has, against the TDS stand-in in `tests/kit/src/tds.rs`
//! (SQL Server cannot be installed here): the query it sends, the re-check before each
//! `KILL`, integers only in `KILL`, sessions already rolling back, the server's local clock,
//! and the error paths; the listing's states, durations and lock waits are in `impact`. The
//! behaviour every engine shares is in `tests/engines.rs`.

use crate::support::config::file;
use crate::support::scenarios::Database;
use crate::support::sever::{TestServer, Workspace, pids};
use chrono::{DateTime, Duration, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::tds::{FakeSession, TdsStandIn};

mod impact;
mod session_refs;

fn fake(id: i16, login: &str, started: DateTime<Utc>, status: &str) -> FakeSession {
    FakeSession {
        session_id: id,
        original_login_name: login.into(),
        login_name: login.into(),
        login_time: started,
        host_name: Some("app-host-1".into()),
        program_name: Some("orders-api".into()),
        database_name: Some("orders".into()),
        client_net_address: Some("10.0.0.7".into()),
        status: status.into(),
        is_user_process: true,
        authenticating_database: None,
        request: None,
        transaction_begin_time: None,
        last_request_start_time: None,
        last_request_end_time: None,
    }
}

async fn server(db: &TdsStandIn, ws: &Workspace) -> TestServer {
    let config = ws
        .config()
        .merge_toml(&db.target(ws, "main").await)
        .credential("orders", &[("main", "app")])
        .toml();
    TestServer::start(&ws.write_config(&config)).await
}

async fn revoke(server: &TestServer) -> (StatusCode, Value) {
    server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "reason": "INC-3"}),
        )
        .await
}

#[tokio::test]
async fn kill_takes_only_integers_rechecks_ids_and_spares_rollbacks() {
    let db = TdsStandIn::start().await;
    let ws = Workspace::new();
    let an_hour_ago = Utc::now() - Duration::hours(1);
    db.add_session(fake(60, "app", an_hour_ago, "sleeping"));
    db.add_session(fake(61, "app", an_hour_ago, "sleeping"));
    db.add_session(fake(62, "app", an_hour_ago, "rollback"));
    db.add_session(fake(63, "other", an_hour_ago, "sleeping"));
    // Between listing and killing, session 61's id is reused by a new session.
    let later = Utc::now();
    db.on_query(Box::new(move |statement, table| {
        let recheck_of_61 =
            statement.contains("s.session_id = @P2") && statement.contains("@P2=61");
        recheck_of_61.then(|| {
            let reused = |s: &FakeSession| FakeSession {
                login_time: later,
                ..s.clone()
            };
            table
                .iter()
                .map(|s| {
                    if s.session_id == 61 {
                        reused(s)
                    } else {
                        s.clone()
                    }
                })
                .collect()
        })
    }));
    let server = server(&db, &ws).await;

    let (status, report) = revoke(&server).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), vec![60]);
    let skipped: Vec<(i64, String)> = report["targets"][0]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["pid"].as_i64().unwrap(),
                s["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        skipped.contains(&(61, "already_gone".into())),
        "{skipped:?}"
    );
    assert!(
        skipped.contains(&(62, "rolling_back".into())),
        "{skipped:?}"
    );
    let left: Vec<i16> = db.sessions().iter().map(|s| s.session_id).collect();
    assert!(
        !left.contains(&60) && left.contains(&61) && left.contains(&62) && left.contains(&63),
        "{left:?}"
    );

    // Reported in UTC with what SQL Server knows about the client.
    let ended = &report["targets"][0]["terminated"][0];
    assert_eq!(ended["application_name"], "orders-api");
    assert_eq!(ended["client_addr"], "10.0.0.7");
    assert_eq!(ended["database"], "orders");
    // Only ever `KILL <digits>`, and the session query sent the login as a parameter.
    let statements = db.statements();
    let kills: Vec<&String> = statements
        .iter()
        .filter(|s| s.to_uppercase().contains("KILL"))
        .collect();
    assert_eq!(kills.len(), 1, "{statements:#?}");
    assert!(kills.iter().all(|k| k.trim() == "KILL 60"), "{kills:?}");
    assert!(
        statements
            .iter()
            .any(|s| s.contains("s.original_login_name = @P1") && s.contains("@P1='app'")),
        "{statements:#?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn permission_denied_and_connection_refused_are_reported() {
    let db = TdsStandIn::start().await;
    let ws = Workspace::new();
    db.add_session(fake(70, "app", Utc::now() - Duration::hours(1), "sleeping"));
    db.deny_kill(true);
    let server = server(&db, &ws).await;
    let (status, report) = revoke(&server).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "incomplete");
    let failed = &report["targets"][0]["failed"][0];
    assert_eq!(failed["pid"], 70);
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("ALTER ANY CONNECTION"),
        "{failed}"
    );
    assert!(db.sessions().iter().any(|s| s.session_id == 70));
    server.stop().await;

    // Nothing listens on the target's port: the target fails, clearly, and is audited.
    let port = db.port();
    drop(db);
    let ws = Workspace::new();
    let url = ws.secret_path(
        "down.url",
        &format!(
            "Server=tcp:127.0.0.1,{port};User Id=sever_admin;Password=x;Encrypt=DANGER_PLAINTEXT"
        ),
    );
    // A short retry window: the target is given up on within the request.
    let config = ws
        .config()
        .set("queue.retry_for", "3s")
        .target("main", "sqlserver", &url)
        .set("targets.main.connect_timeout", "1s")
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let (status, report) = revoke(&server).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(
        report["targets"][0]["error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{report}"
    );
    server.stop().await;
    assert_eq!(ws.records("target.failed").await.len(), 1);
}

#[tokio::test]
async fn a_server_clock_in_local_time_is_converted_both_ways() {
    let db = TdsStandIn::start().await;
    db.set_utc_offset_minutes(-300); // the server runs on UTC-5
    let ws = Workspace::new();
    let now = Utc::now();
    db.add_session(fake(80, "app", now - Duration::hours(2), "sleeping"));
    db.add_session(fake(81, "app", now - Duration::minutes(10), "sleeping"));
    let server = server(&db, &ws).await;
    let before = (now - Duration::hours(1)).to_rfc3339();
    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "before": before, "reason": "tz"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    // Without the conversion both would be older than an unconverted (5 h late) cutoff.
    assert_eq!(pids(&report, "main", "terminated"), vec![80]);
    assert!(db.sessions().iter().any(|s| s.session_id == 81));
    // Reported in UTC again.
    let started: DateTime<Utc> = report["targets"][0]["terminated"][0]["backend_start"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (started - (now - Duration::hours(2)))
            .num_milliseconds()
            .abs()
            < 10,
        "{started}"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_a_rotation_time_the_cutoff_is_the_password_change() {
    let db = TdsStandIn::start().await;
    let ws = Workspace::new();
    let changed = Utc::now() - Duration::minutes(30);
    db.set_password_last_set("app", Some(changed));
    db.add_session(fake(90, "app", changed - Duration::hours(1), "sleeping")); // old password
    db.add_session(fake(91, "app", changed + Duration::minutes(5), "sleeping")); // new password
    let server = server(&db, &ws).await;
    // The event names no rotated_at: SQL Server's PasswordLastSetTime is the better cutoff.
    let (status, report) = server
        .event(&json!({"credential": "orders", "kind": "rotated"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), vec![90]);
    let notes = report["targets"][0]["notes"].as_array().unwrap();
    assert!(
        notes[0].as_str().unwrap().contains("PasswordLastSetTime"),
        "{notes:?}"
    );
    assert!(db.sessions().iter().any(|s| s.session_id == 91));
    server.stop().await;
}

#[tokio::test]
async fn a_contained_database_user_is_not_the_server_login_of_the_same_name() {
    let db = TdsStandIn::start().await;
    let ws = Workspace::new();
    let old = Utc::now() - Duration::hours(1);
    db.add_session(fake(95, "app", old, "sleeping"));
    db.add_session(FakeSession {
        authenticating_database: Some("orders".into()),
        ..fake(96, "app", old, "sleeping")
    });
    let config = ws
        .config()
        .merge_toml(&db.target(&ws, "main").await)
        .credential("contained", &[("main", "orders/app")])
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let (status, report) = server
        .event(&json!({"credential": "contained", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), vec![96]);
    assert!(
        db.sessions().iter().any(|s| s.session_id == 95),
        "the server login's session must survive"
    );
    // And the other way round: revoking the server login spares a contained user of that name.
    db.add_session(FakeSession {
        authenticating_database: Some("orders".into()),
        ..fake(98, "app", old, "sleeping")
    });
    let (status, report) = revoke(&server).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), vec![95]);
    assert!(
        db.sessions().iter().any(|s| s.session_id == 98),
        "the contained user's session must survive"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_named_instance_is_found_through_the_sql_browser() {
    let db = TdsStandIn::start().await;
    let browser = db.start_browser("INST").await;
    db.allow_login("sever_admin", "severadminpw");
    db.add_session(fake(97, "app", Utc::now() - Duration::hours(1), "sleeping"));
    let ws = Workspace::new();
    let url = ws.secret_path(
        "named.url",
        &format!("Server=tcp:127.0.0.1\\INST,{browser};User Id=sever_admin;Password=severadminpw;Encrypt=DANGER_PLAINTEXT"),
    );
    let config = ws
        .config()
        .set("targets.main.engine", "sqlserver")
        .set("targets.main.url", file(&url))
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let (status, report) = revoke(&server).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), vec![97]);
    server.stop().await;
}

/// `(pid, reason)` of every session `report` lists as skipped on its first target.
fn skipped(report: &Value) -> Vec<(i64, String)> {
    let mut skipped: Vec<(i64, String)> = report["targets"][0]["skipped"]
        .as_array()
        .unwrap_or_else(|| panic!("no skipped in {report}"))
        .iter()
        .map(|s| {
            (
                s["pid"].as_i64().unwrap(),
                s["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    skipped.sort();
    skipped
}

#[tokio::test]
async fn sysadmins_and_control_server_holders_are_skipped_and_a_null_answer_is_not_ordinary() {
    let db = TdsStandIn::start().await;
    let ws = Workspace::new();
    let an_hour_ago = Utc::now() - Duration::hours(1);
    let logins = ["app", "dba", "controller", "hidden"];
    for (id, login) in (70..).zip(logins) {
        db.add_session(fake(id, login, an_hour_ago, "sleeping"));
    }
    db.set_sysadmin("dba", Some(true));
    db.grant_control_server("controller");
    // The caller may not see this login's membership: IS_SRVROLEMEMBER answers NULL.
    db.set_sysadmin("hidden", None);
    let mapped: Vec<(&str, &str)> = logins.iter().map(|l| ("main", *l)).collect();
    let config = ws
        .config()
        .merge_toml(&db.target(&ws, "main").await)
        .credential("all", &mapped)
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let revoke_all = json!({"credential": "all", "kind": "revoked"});

    let (status, report) = server.event(&revoke_all).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), vec![70]);
    assert_eq!(
        skipped(&report),
        vec![
            (71, "superuser".to_owned()),
            (72, "superuser".to_owned()),
            (73, "privileges_unknown".to_owned()),
        ],
        "{report}"
    );
    let left: Vec<i16> = db.sessions().iter().map(|s| s.session_id).collect();
    assert!(
        [71, 72, 73].iter().all(|id| left.contains(id)) && !left.contains(&70),
        "{left:?}"
    );
    assert!(
        report["targets"][0]["notes"]
            .to_string()
            .contains("VIEW ANY DEFINITION"),
        "{report}"
    );

    // Without VIEW ANY DEFINITION a 0 means nothing: an ordinary login is not ended either.
    db.set_view_any_definition(false);
    db.add_session(fake(74, "app", an_hour_ago, "sleeping"));
    let (status, report) = server.event(&revoke_all).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(pids(&report, "main", "terminated").is_empty(), "{report}");
    assert!(
        skipped(&report).contains(&(74, "privileges_unknown".to_owned())),
        "{report}"
    );
    assert!(db.sessions().iter().any(|s| s.session_id == 74));
    server.stop().await;
}
