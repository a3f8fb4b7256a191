//! Revocations that take the session selector on a real MariaDB, through the real server:
//! application names from `performance_schema` (a real `mariadb` client sends its
//! `program_name`), `cancel` by `KILL QUERY ID` keeping the connection and its transaction,
//! and `graceful` cancelling and then ending a session that holds on.

use std::process::Stdio;
use std::time::Duration;

use crate::support::scenarios::Database;
use crate::support::sever::{TestServer, Workspace, pids, target_report};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::mariadb::TestMariaDb;
use sqlx::{Executor, MySqlConnection};

const GONE: Duration = Duration::from_secs(5);

async fn serve(db: &TestMariaDb, ws: &Workspace) -> TestServer {
    let config = ws
        .config()
        .merge_toml(&Database::target(db, ws, "main").await)
        .toml();
    TestServer::start(&ws.write_config(&config)).await
}

/// `(pid, decision)` of target `main`'s decisions.
fn decisions(report: &Value) -> Vec<(i64, String)> {
    let mut d: Vec<(i64, String)> = target_report(report, "main")["decisions"]
        .as_array()
        .unwrap_or_else(|| panic!("no decisions in {report}"))
        .iter()
        .map(|d| {
            (
                d["pid"].as_i64().unwrap(),
                d["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    d.sort();
    d
}

/// Polls the listing until thread `id` shows `state`.
async fn wait_for_state(server: &TestServer, id: u64, state: &str) {
    for _ in 0..300 {
        let (status, listing) = server.operator_get("/v1/sessions?logins=app").await;
        assert_eq!(status, StatusCode::OK, "{listing}");
        let shown = listing["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["pid"].as_u64() == Some(id) && s["state"] == state);
        if shown {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("thread {id} never showed {state}");
}

async fn in_transaction(conn: &mut MySqlConnection) -> bool {
    let n: i64 = sqlx::query_scalar("SELECT CAST(@@in_transaction AS SIGNED)")
        .fetch_one(conn)
        .await
        .unwrap();
    n == 1
}

#[tokio::test]
async fn application_names_come_from_performance_schema_and_spare_the_mariadb_client() {
    sever::install_crypto_provider();
    let db = TestMariaDb::start_with_args(&["--performance-schema=ON"]);
    db.create_login("app", "pw0").await;
    let ws = Workspace::new();
    let server = serve(&db, &ws).await;
    // Without the grant, only a selector that needs application names is refused.
    let (_api, api_id) = db.session("app", "pw0").await;
    let (status, body) = server.operator_get("/v1/sessions?logins=app").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sessions"].as_array().unwrap().len(), 1, "{body}");
    let (status, body) = server
        .operator_get("/v1/sessions?exclude_application_names=mysql")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("session_connect_attrs"), "{body}");
    db.exec("GRANT SELECT ON performance_schema.session_connect_attrs TO 'sever_admin'@'%'")
        .await;
    // The real command-line client sends its program_name as a connection attribute.
    let mut client = std::process::Command::new("mariadb")
        .args([
            "--no-defaults",
            "-uapp",
            "-ppw0",
            "-h127.0.0.1",
            &format!("-P{}", db.port()),
            "-e",
            "SELECT SLEEP(30)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the mariadb client");
    let mut client_id = None;
    let mut listing = Value::Null;
    for _ in 0..300 {
        listing = server.operator_get("/v1/sessions?logins=app").await.1;
        client_id = listing["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["application_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("m"))
            })
            .and_then(|s| s["pid"].as_i64());
        if client_id.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some(client_id) = client_id else {
        let _ = client.kill();
        let out = client.wait_with_output().ok();
        panic!("the client's session, named by performance_schema, not in {listing} ({out:?})");
    };

    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "exclude_application_names": ["mysql", "mariadb*"],
                    "targets": ["main"], "reason": "INC-18"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        decisions(&report),
        [
            (api_id as i64, "terminated".to_owned()),
            (client_id, "excluded".to_owned())
        ]
    );
    assert!(db.wait_gone(api_id, GONE).await);
    assert!(db.is_alive(client_id as u64).await, "the client is spared");
    let _ = client.kill();
    let _ = client.wait();
}

#[tokio::test]
async fn cancel_kills_the_selected_query_and_keeps_the_connection_and_its_transaction() {
    sever::install_crypto_provider();
    let db = TestMariaDb::start();
    db.create_login("app", "pw0").await;
    db.exec("CREATE DATABASE appdb").await;
    db.exec("CREATE TABLE appdb.t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        .await;
    db.exec("INSERT INTO appdb.t VALUES (1, 0)").await;
    db.exec("GRANT ALL ON appdb.* TO 'app'@'%'").await;
    let ws = Workspace::new();
    let server = serve(&db, &ws).await;
    let (mut sleeper, sleeper_id) = db.session("app", "pw0").await;
    sleeper.execute("BEGIN").await.unwrap();
    sleeper
        .execute("UPDATE appdb.t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    let sleeping = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let _ = sleeper.execute("SELECT SLEEP(30)").await;
        (sleeper, started.elapsed())
    });
    let (_idle, idle_id) = db.session("app", "pw0").await;
    wait_for_state(&server, sleeper_id, "active").await;

    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "reason": "runaway", "mode": "cancel"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(
        decisions(&report),
        [
            (sleeper_id as i64, "cancelled".to_owned()),
            (idle_id as i64, "no_statement".to_owned())
        ]
    );
    let (mut sleeper, took) = tokio::time::timeout(GONE, sleeping).await.unwrap().unwrap();
    assert!(
        took < Duration::from_secs(20),
        "the sleep was cut short: {took:?}"
    );
    assert!(
        in_transaction(&mut sleeper).await,
        "MariaDB's KILL QUERY leaves the transaction open"
    );
    sleeper.execute("ROLLBACK").await.unwrap();
    assert!(db.is_alive(idle_id).await);
}

#[tokio::test]
async fn graceful_ends_an_idle_session_at_once_and_cancels_then_ends_one_that_holds_on() {
    sever::install_crypto_provider();
    let db = TestMariaDb::start();
    db.create_login("app", "pw0").await;
    let ws = Workspace::new();
    let server = serve(&db, &ws).await;
    let (_idle, idle_id) = db.session("app", "pw0").await;
    let (mut holder, holder_id) = db.session("app", "pw0").await;
    holder.execute("BEGIN").await.unwrap();
    // The client keeps its connection after the cancel, as a pool would.
    let holding = tokio::spawn(async move {
        let _ = holder.execute("SELECT SLEEP(30)").await;
        holder
    });
    wait_for_state(&server, holder_id, "active").await;
    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "reason": "maintenance",
                    "mode": "graceful", "grace": "1s"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        decisions(&report),
        [
            (idle_id as i64, "terminated".to_owned()),
            (holder_id as i64, "terminated".to_owned())
        ],
        "{report}"
    );
    assert_eq!(pids(&report, "main", "cancelled"), [holder_id as i64]);
    assert!(db.wait_gone(idle_id, GONE).await && db.wait_gone(holder_id, GONE).await);
    drop(holding.await.unwrap());
}

#[tokio::test]
async fn rds_mode_cancels_through_mysql_rds_kill_query() {
    use sever::select::{Ending, Mode, Selector};
    use sever::terminate::selected::{SelectRequest, end_selected};
    sever::install_crypto_provider();
    let db = TestMariaDb::start();
    // RDS provides this procedure (running with its definer's rights); here it is made the same way.
    // It also records each call, so the test sees the cancel went through it.
    db.exec("CREATE TABLE mysql.rds_calls (thread BIGINT)")
        .await;
    db.exec(
        "CREATE PROCEDURE mysql.rds_kill_query(IN thread BIGINT) SQL SECURITY DEFINER \
         BEGIN INSERT INTO mysql.rds_calls VALUES (thread); KILL QUERY thread; END",
    )
    .await;
    let ws = Workspace::new();
    let engine = super::mysql::engine(&db, &ws, true).await;
    db.exec("GRANT EXECUTE ON PROCEDURE mysql.rds_kill_query TO 'sever_admin'@'%'")
        .await;
    db.create_login("app", "pw0").await;
    let (mut sleeper, sleeper_id) = db.session("app", "pw0").await;
    let sleeping = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let _ = sleeper.execute("SELECT SLEEP(30)").await;
        (sleeper, started.elapsed())
    });
    let request = SelectRequest {
        selector: Selector {
            logins: vec!["app".into()],
            ..Selector::default()
        },
        all_logins: false,
        ending: Ending {
            mode: Mode::Cancel,
            grace: None,
        },
        protected: Default::default(),
        dry_run: false,
        verify_timeout: GONE,
        at_most: None,
        journal: None,
        pick: None,
    };
    let mut outcome = Default::default();
    for _ in 0..300 {
        outcome = end_selected(&engine, &request).await.unwrap();
        if !outcome.cancelled.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancelled: Vec<i64> = outcome.cancelled.iter().map(|s| s.pid).collect();
    assert_eq!(cancelled, [sleeper_id as i64], "{outcome:?}");
    assert!(
        outcome.failed.is_empty() && outcome.remaining.is_empty(),
        "{outcome:?}"
    );
    let (_sleeper, took) = tokio::time::timeout(GONE, sleeping).await.unwrap().unwrap();
    assert!(
        took < Duration::from_secs(20),
        "the sleep was cut short: {took:?}"
    );
    assert!(db.is_alive(sleeper_id).await, "the connection stays");
    let mut root = db.root_connection().await;
    let calls: Vec<i64> = sqlx::query_scalar("SELECT thread FROM mysql.rds_calls")
        .fetch_all(&mut root)
        .await
        .unwrap();
    assert_eq!(calls, [sleeper_id as i64]);
}

/// A policy's pick on a real MariaDB: `connections_above_percent_of_max` reads
/// `max_connections`, and without start times the rising connection ids give the age, so
/// `oldest` picks the first connection.
#[tokio::test]
async fn a_policy_pick_reads_max_connections_and_takes_the_lowest_id_as_oldest() {
    use sever::select::{Ending, Pick, Selector, Victims, When};
    use sever::terminate::Engine;
    use sever::terminate::selected::{SelectRequest, end_selected};
    sever::install_crypto_provider();
    let db = TestMariaDb::start();
    let ws = Workspace::new();
    let engine = super::mysql::engine(&db, &ws, false).await;
    let max: u64 = {
        let mut conn = db.root_connection().await;
        sqlx::query_scalar("SELECT CAST(@@max_connections AS UNSIGNED)")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(engine.connection_limit().await.unwrap(), max);
    db.create_login("app", "pw0").await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(db.session("app", "pw0").await);
    }
    let first = held[0].1 as i64;
    let request = |when| SelectRequest {
        selector: Selector {
            logins: vec!["app".into()],
            ..Selector::default()
        },
        all_logins: false,
        ending: Ending::TERMINATE,
        protected: Default::default(),
        dry_run: true,
        verify_timeout: GONE,
        at_most: None,
        journal: None,
        pick: Some(Pick {
            victims: Victims::Oldest,
            when,
        }),
    };
    // 8 app sessions (and sever's) are far below 50% of max_connections.
    let below = end_selected(&engine, &request(When::ConnectionsAbovePercentOfMax(50)))
        .await
        .unwrap();
    let threshold = below.threshold.unwrap();
    assert!(
        !threshold.met && threshold.limit == Some(max),
        "{threshold:?}"
    );
    assert!(below.matched.is_empty());
    let picked = end_selected(&engine, &request(When::MatchingAtLeast(8)))
        .await
        .unwrap();
    let pids: Vec<i64> = picked.matched.iter().map(|s| s.pid).collect();
    assert_eq!(
        pids,
        [first],
        "the lowest connection id is the oldest: {picked:?}"
    );
}
