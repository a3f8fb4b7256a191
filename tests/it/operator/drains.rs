//! Database drains through the real server: against a real PostgreSQL, a drain ends the
//! database's sessions but the spared application's, refuses new connections to it (not
//! to another database, not a superuser's) and re-opens it at expiry with its connection
//! limit exactly as it was; overlapping drains re-open only when the last ends; guard rails
//! refuse before anything changes. On a real MariaDB, with `lock_accounts`, the accounts
//! using the database are locked server-wide until expiry. SQL Server through the TDS
//! stand-in: `RESTRICTED_USER` is sent (sessions listed first), `MULTI_USER` restored, and
//! `except` refused.

use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::mariadb::TestMariaDb;
use sever_testkit::pg::TestPostgres;
use sever_testkit::tds::{FakeSession, TdsStandIn};
use sqlx::{Connection, MySqlConnection, PgConnection};

use crate::support::config::ConfigBuilder;
use crate::support::scenarios::Database;
use crate::support::sever::{TOKEN, TestServer, Workspace, create_admin, pids};

const GONE: Duration = Duration::from_secs(5);

/// A target `main` with locks on, a database `shop` owned by `shop_owner` (of which sever's
/// admin is a member, which `CONNECTION LIMIT` needs) with a limit of 50, and login `app`.
async fn draining(pg: &TestPostgres, ws: &Workspace) -> ConfigBuilder {
    create_admin(pg).await;
    pg.exec("CREATE ROLE shop_owner NOLOGIN; GRANT shop_owner TO sever_admin")
        .await;
    pg.exec("CREATE DATABASE shop OWNER shop_owner").await;
    pg.exec("ALTER DATABASE shop CONNECTION LIMIT 50").await;
    pg.create_login("app", "pw").await;
    ws.target_config(ws.config(), "main", pg)
        .set("targets.main.locks", true)
        .set("queue.poll_interval", "100ms")
}

async fn can_connect(pg: &TestPostgres, login: &str, db: &str) -> bool {
    PgConnection::connect(&pg.url(login, "pw", db))
        .await
        .is_ok()
}

async fn connlimit(pg: &TestPostgres) -> i32 {
    let mut conn = pg.session("postgres", "", "postgres", "").await.0;
    sqlx::query_scalar("SELECT datconnlimit FROM pg_database WHERE datname = 'shop'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn drain_id(report: &Value) -> String {
    report["action_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no action_id in {report}"))
        .to_owned()
}

async fn lift(server: &TestServer, id: &str) -> (StatusCode, Value) {
    let r = server
        .client
        .delete(server.operator_url(&format!("/v1/drains/{id}?reason=done")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn a_drain_spares_the_excepted_refuses_new_connections_and_reopens_exactly() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = draining(&pg, &ws).await.toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let (_a, first) = pg.session("app", "pw", "shop", "orders-api").await;
    let (_b, second) = pg.session("app", "pw", "shop", "orders-api").await;
    let (_c, dump) = pg.session("app", "pw", "shop", "pg_dump").await;
    let (_d, elsewhere) = pg.session("app", "pw", "postgres", "orders-api").await;

    let (status, report) = server
        .operator_post(
            "/v1/drains",
            &json!({"target": "main", "database": "shop", "reason": "schema change",
                    "for": "3s", "except": {"application_names": ["pg_dump"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    let mut expected = vec![i64::from(first), i64::from(second)];
    expected.sort();
    assert_eq!(pids(&report, "main", "terminated"), expected, "{report}");
    assert!(pg.wait_gone(first, GONE).await && pg.wait_gone(second, GONE).await);
    assert!(pg.is_alive(dump).await, "the spared application stays");
    assert!(
        pg.is_alive(elsewhere).await,
        "another database is untouched"
    );
    assert!(
        report.to_string().contains("exclude_application_names"),
        "the spared session is reported with its rule: {report}"
    );
    assert_eq!(connlimit(&pg).await, 0);
    assert!(
        !can_connect(&pg, "app", "shop").await,
        "new connections are refused"
    );
    assert!(
        can_connect(&pg, "app", "postgres").await,
        "another database stays reachable"
    );
    pg.session("postgres", "", "shop", "").await; // a superuser still gets in (panics if not)

    let (status, listed) = server.operator_get("/v1/drains").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["drain_id"], drain_id(&report));
    assert_eq!(listed[0]["database"], "shop");
    assert_eq!(listed[0]["reason"], "schema change");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while !can_connect(&pg, "app", "shop").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "re-opened at expiry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(connlimit(&pg).await, 50, "the limit from before, exactly");
    let (_, listed) = server.operator_get("/v1/drains").await;
    assert_eq!(listed, json!([]));
    let (_, all) = server.operator_get("/v1/drains?all=true").await;
    assert_eq!(all[0]["ended_by"], "expiry", "{all}");
    let (status, ready) = server.readyz().await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["locks"]["ok"], true, "{ready}");
}

#[tokio::test]
async fn overlapping_drains_reopen_when_the_last_ends() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = draining(&pg, &ws).await.toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let body = json!({"target": "main", "database": "shop", "reason": "r", "for": "10m"});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, report) = server.operator_post("/v1/drains", &body).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["status"], "completed", "{report}");
        ids.push(drain_id(&report));
    }
    let (status, body) = lift(&server, &ids[0]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.to_string().contains("stays drained"), "{body}");
    assert_eq!(
        connlimit(&pg).await,
        0,
        "the second drain is still in force"
    );
    assert!(!can_connect(&pg, "app", "shop").await);
    let (status, body) = lift(&server, &ids[1]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        connlimit(&pg).await,
        50,
        "restored once the last drain ended"
    );
    assert!(can_connect(&pg, "app", "shop").await);
    let (status, body) = lift(&server, &ids[0]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn guard_rails_refuse_a_drain_before_anything_changes() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let plain = ws.secret_path(
        "plain.url",
        &pg.url(
            "sever_admin",
            crate::support::sever::ADMIN_PASSWORD,
            "postgres",
        ),
    );
    let maria = ws.secret_path("maria.url", "mysql://sever:pw@127.0.0.1:1/app");
    let config = draining(&pg, &ws)
        .await
        .target_postgres("plain", &plain)
        .target("maria", "mysql", &maria)
        .set("targets.maria.locks", true)
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let (_s, pid) = pg.session("app", "pw", "shop", "orders-api").await;
    let drain = |extra: Value| {
        let mut body = json!({"target": "main", "database": "shop", "reason": "r", "for": "1m"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    for (body, needle) in [
        (drain(json!({"for": null})), "permanent"),
        (drain(json!({"permanent": true})), "not both"),
        (drain(json!({"reason": " "})), "reason"),
        (drain(json!({"target": "plain"})), "locks = true"),
        (drain(json!({"database": "postgres"})), "connects to"),
        (
            drain(json!({"except": {"exclude_logins": ["x"]}})),
            "exclusion",
        ),
        (drain(json!({"except": {"states": ["idle"]}})), "exclusion"),
        (drain(json!({"mode": "cancel"})), "cancel"),
        (drain(json!({"mode": "graceful"})), "grace"),
        (drain(json!({"target": "maria"})), "no per-database gate"),
        (
            drain(json!({"lock_accounts": true})),
            "MySQL/MariaDB targets only",
        ),
        (drain(json!({"drain": 1})), "drain"),
    ] {
        let (status, answer) = server.operator_post("/v1/drains", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(answer.to_string().contains(needle), "{body}: {answer}");
    }
    assert_eq!(connlimit(&pg).await, 50);
    assert!(pg.is_alive(pid).await);
    assert_eq!(
        ws.records("action.planned").await.len(),
        0,
        "nothing was planned"
    );
}

fn fake(id: i16, database: &str) -> FakeSession {
    FakeSession {
        session_id: id,
        original_login_name: "app".into(),
        login_name: "app".into(),
        login_time: Utc::now() - chrono::Duration::minutes(5),
        host_name: Some("app-host-1".into()),
        program_name: Some("orders-api".into()),
        database_name: Some(database.into()),
        client_net_address: Some("10.0.0.7".into()),
        status: "sleeping".into(),
        is_user_process: true,
        authenticating_database: None,
        request: None,
        transaction_begin_time: None,
        last_request_start_time: None,
        last_request_end_time: None,
    }
}

#[tokio::test]
async fn sqlserver_drain_sends_restricted_user_lists_sessions_first_and_refuses_except() {
    let db = TdsStandIn::start().await;
    let ws = Workspace::new();
    let config = ws
        .config()
        .merge_toml(&db.target(&ws, "main").await)
        .set("targets.main.locks", true)
        .set("queue.poll_interval", "100ms")
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    db.add_session(fake(61, "shop"));
    db.add_session(fake(62, "shop"));
    db.add_session(fake(63, "orders"));

    let (status, answer) = server
        .operator_post(
            "/v1/drains",
            &json!({"target": "main", "database": "shop", "reason": "r", "for": "10m",
                    "except": {"application_names": ["sqlcmd"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer.to_string().contains("except"), "{answer}");
    assert_eq!(db.user_access("shop").as_deref(), Some("MULTI_USER"));

    let (status, report) = server
        .operator_post(
            "/v1/drains",
            &json!({"target": "main", "database": "shop", "reason": "r", "for": "10m"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(
        pids(&report, "main", "terminated"),
        vec![61, 62],
        "{report}"
    );
    assert_eq!(db.user_access("shop").as_deref(), Some("RESTRICTED_USER"));
    assert!(
        Database::is_alive(&db, 63).await,
        "another database is untouched"
    );
    let statements = db.statements();
    let alter = statements
        .iter()
        .position(|s| {
            s.contains("ALTER DATABASE [shop] SET RESTRICTED_USER WITH ROLLBACK IMMEDIATE")
        })
        .unwrap_or_else(|| panic!("no RESTRICTED_USER in {statements:?}"));
    let listed = statements
        .iter()
        .position(|s| s.contains("dm_exec_sessions"))
        .unwrap_or_else(|| panic!("no listing in {statements:?}"));
    assert!(
        listed < alter,
        "the sessions are listed before the gate ends them"
    );

    let (status, body) = lift(&server, &drain_id(&report)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        db.user_access("shop").as_deref(),
        Some("MULTI_USER"),
        "{body}"
    );
    assert!(
        db.statements()
            .iter()
            .any(|s| s.contains("ALTER DATABASE [shop] SET MULTI_USER")),
        "{:?}",
        db.statements()
    );
}

#[tokio::test]
async fn sqlserver_refuses_a_drain_that_would_end_a_protected_logins_session() {
    let db = TdsStandIn::start().await;
    let ws = Workspace::new();
    let config = ws
        .config()
        .merge_toml(&db.target(&ws, "main").await)
        .set("targets.main.locks", true)
        .set("targets.main.protected_logins", vec!["backup"])
        .set("queue.retry_for", "1s")
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    db.add_session(fake(61, "shop"));
    db.add_session(FakeSession {
        original_login_name: "backup".into(),
        login_name: "backup".into(),
        ..fake(62, "shop")
    });
    let (status, report) = server
        .operator_post(
            "/v1/drains",
            &json!({"target": "main", "database": "shop", "reason": "r", "for": "10m"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "incomplete", "{report}");
    assert!(report.to_string().contains("backup"), "{report}");
    assert_eq!(db.user_access("shop").as_deref(), Some("MULTI_USER"));
    assert!(
        !db.statements()
            .iter()
            .any(|s| s.contains("RESTRICTED_USER")),
        "the gate was never closed"
    );
    assert!(Database::is_alive(&db, 62).await && Database::is_alive(&db, 61).await);
    let (_, active) = server.operator_get("/v1/drains").await;
    assert_eq!(
        active,
        json!([]),
        "a drain that closed nothing is not in force"
    );
}

/// A MariaDB session of `user` (password `pw`) using `database`, and its thread id.
async fn maria_session(
    db: &TestMariaDb,
    user: &str,
    database: &str,
) -> Result<(MySqlConnection, u64), sqlx::Error> {
    let opts = db.connect_options(user).password("pw").database(database);
    let mut conn = MySqlConnection::connect_with(&opts).await?;
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&mut conn)
        .await?;
    Ok((conn, id))
}

#[tokio::test]
async fn mariadb_drain_locks_the_accounts_using_the_database_until_expiry() {
    sever::install_crypto_provider();
    let db = TestMariaDb::start();
    let ws = Workspace::new();
    let target = Database::target(&db, &ws, "main").await;
    // Locks need CREATE USER, and reading privileges to tell administrators apart.
    db.exec("GRANT CREATE USER ON *.* TO 'sever_admin'@'%'")
        .await;
    db.exec("CREATE DATABASE shop; CREATE DATABASE other").await;
    for (user, database) in [("buyer", "shop"), ("seller", "shop"), ("auditor", "other")] {
        db.create_account(user, "%", "pw").await;
        db.exec(&format!("GRANT ALL ON {database}.* TO '{user}'@'%'"))
            .await;
    }
    let config = ws
        .config()
        .merge_toml(&target)
        .set("targets.main.locks", true)
        .set("queue.poll_interval", "100ms")
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let (_b, buyer) = maria_session(&db, "buyer", "shop").await.unwrap();
    let (_s, seller) = maria_session(&db, "seller", "shop").await.unwrap();
    let (_a, auditor) = maria_session(&db, "auditor", "other").await.unwrap();
    let body = json!({"target": "main", "database": "shop", "reason": "schema change",
                      "for": "2s"});

    let (status, answer) = server.operator_post("/v1/drains", &body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer.to_string().contains("lock_accounts: true"),
        "{answer}"
    );

    let mut body = body;
    body["lock_accounts"] = json!(true);
    let (status, report) = server.operator_post("/v1/drains", &body).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    let id = drain_id(&report);
    let mut expected = vec![buyer as i64, seller as i64];
    expected.sort();
    assert_eq!(pids(&report, "main", "terminated"), expected, "{report}");
    assert!(db.wait_gone(buyer, GONE).await && db.wait_gone(seller, GONE).await);
    assert!(
        db.is_alive(auditor).await,
        "another database's session stays"
    );
    let text = report.to_string();
    assert!(
        text.contains(
            "\\\"buyer\\\", \\\"seller\\\": each locked account loses every \
                       database on the server, not just shop; accounts not connected now \
                       are not covered"
        ),
        "{report}"
    );
    for user in ["buyer", "seller"] {
        let refused = maria_session(&db, user, "shop").await.unwrap_err();
        assert!(refused.to_string().contains("locked"), "{user}: {refused}");
    }
    maria_session(&db, "auditor", "other").await.unwrap();

    let (status, locks) = server.operator_get("/v1/locks").await;
    assert_eq!(status, StatusCode::OK, "{locks}");
    let mut locked: Vec<&str> = locks
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["lock_id"] == id.as_str())
        .map(|l| l["login"].as_str().unwrap())
        .collect();
    locked.sort();
    assert_eq!(locked, ["buyer", "seller"], "{locks}");
    let (_, drains) = server.operator_get("/v1/drains").await;
    assert_eq!(drains[0]["drain_id"], id.as_str(), "{drains}");
    // Its locks are lifted with the drain, not one account at a time.
    let lifted = server
        .client
        .delete(server.operator_url(&format!("/v1/locks/{id}?reason=r")))
        .bearer_auth(crate::support::sever::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // At expiry both accounts get in again, and nothing is left in force.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    for user in ["buyer", "seller"] {
        while maria_session(&db, user, "shop").await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user} still locked after expiry"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (_, locks) = server.operator_get("/v1/locks").await;
    assert_eq!(locks.as_array().map(Vec::len), Some(0), "{locks}");
    let (_, drains) = server.operator_get("/v1/drains").await;
    assert_eq!(drains.as_array().map(Vec::len), Some(0), "{drains}");
    let mut said = false;
    for _ in 0..50 {
        let completed = ws.records("action.completed").await;
        said = completed
            .iter()
            .any(|r| r.to_string().contains("its accounts' locks ended"));
        if said {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(said, "the re-open says what it undid");
}
