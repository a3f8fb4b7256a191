//! Failures are retried by what they are: a refusal that will recur (here a privilege the
//! admin login lacks, on a real PostgreSQL whose `SELECT 1` probe keeps answering) is given
//! up after 3 attempts and reported with the server's message, not retried every second for
//! an hour; and the classification table holds for errors real PostgreSQL and MariaDB
//! servers send.

use std::time::Duration;

use crate::support::sever::{ADMIN_PASSWORD, TestServer, Workspace, create_admin};
use reqwest::StatusCode;
use serde_json::json;
use sever::terminate::classify::{ErrorClass, Verdict, sqlx_verdict};
use sever_testkit::mariadb::TestMariaDb;
use sever_testkit::pg::TestPostgres;
use sqlx::{Connection, Executor, MySqlConnection, PgConnection};

#[tokio::test]
async fn a_privilege_refusal_is_given_up_after_three_attempts_with_the_servers_message() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    // An hour to retry, and a request limit that only a give-up within it can meet.
    let config = ws
        .config()
        .set("server.request_timeout", "10s")
        .set("queue.retry_for", "1h")
        .set("queue.max_backoff", "1s");
    let config = ws
        .target_config(config, "a", &pg)
        .credential("orders", &[("a", "app")])
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    // sever's login may no longer read role names: every attempt is refused with 42501,
    // while `SELECT 1` (the probe) still answers.
    pg.exec("REVOKE SELECT ON pg_catalog.pg_roles FROM PUBLIC")
        .await;

    let (status, report) = server
        .event(&json!({"credential": "orders", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "still retrying: {report}");
    assert_eq!(report["status"], "incomplete", "{report}");
    let error = report["targets"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("permission denied") && error.contains("gave up after 3 attempts"),
        "{error}"
    );

    // The action's status shows the step failed, with the server's message.
    let id = report["action_id"].as_str().unwrap();
    let (_, action) = server.operator_get(&format!("/v1/actions/{id}")).await;
    let step = &action["steps"][0];
    assert_eq!(step["state"], "done", "{action}");
    assert_eq!(step["attempts"], 3, "{action}");
    assert!(
        step["last_error"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{action}"
    );
    server.stop().await;

    // Audited: retrying once, then failed with the message and the attempts.
    let failed = ws.records("target.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["attempts"], 3);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("permission denied for view pg_roles"),
        "{}",
        failed[0]
    );
    assert_eq!(ws.records("target.retrying").await.len(), 1);
}

/// The error of running `sql` on `conn`.
async fn pg_error(conn: &mut PgConnection, sql: &'static str) -> sqlx::Error {
    conn.execute(sql).await.expect_err(sql)
}

fn class(e: &sqlx::Error) -> Verdict {
    sqlx_verdict(e)
}

const UNREACHABLE: Verdict = Verdict::Failed(ErrorClass::Unreachable);
const TRANSIENT: Verdict = Verdict::Failed(ErrorClass::Transient);
const DETERMINISTIC: Verdict = Verdict::Failed(ErrorClass::Deterministic);

#[tokio::test]
async fn errors_from_a_real_postgresql_are_classified_by_sqlstate() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.exec("CREATE TABLE held (id int); INSERT INTO held VALUES (1)")
        .await;
    let admin = pg.url("sever_admin", ADMIN_PASSWORD, "postgres");
    let mut conn = PgConnection::connect(&admin).await.unwrap();

    // Connect: a wrong password (28P01), nothing listening (a socket error).
    let wrong = pg.url("sever_admin", "wrong", "postgres");
    let e = PgConnection::connect(&wrong).await.unwrap_err();
    assert_eq!(class(&e), UNREACHABLE, "{e}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = PgConnection::connect(&format!("postgres://x:y@127.0.0.1:{port}/postgres"))
        .await
        .unwrap_err();
    assert_eq!(class(&e), UNREACHABLE, "{e}");

    // Will recur: a missing privilege (42501), an unknown table (42P01), syntax (42601),
    // a NUL byte in a string (22021).
    for sql in [
        "SELECT * FROM held",
        "SELECT * FROM no_such_table",
        "SELEC 1",
    ] {
        let e = pg_error(&mut conn, sql).await;
        assert_eq!(class(&e), DETERMINISTIC, "{sql}: {e}");
    }
    let e = sqlx::query("SELECT $1::text")
        .bind("a\0b")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(class(&e), DETERMINISTIC, "{e}");

    // May pass: a statement timeout (57014), a lock timeout (55P03), a deadlock (40P01).
    conn.execute("SET statement_timeout = '50ms'")
        .await
        .unwrap();
    let e = pg_error(&mut conn, "SELECT pg_sleep(5)").await;
    assert_eq!(class(&e), TRANSIENT, "{e}");
    conn.execute("RESET statement_timeout").await.unwrap();

    let mut owner = PgConnection::connect(&pg.superuser_url("postgres"))
        .await
        .unwrap();
    let mut other = PgConnection::connect(&pg.superuser_url("postgres"))
        .await
        .unwrap();
    owner.execute("BEGIN; LOCK TABLE held").await.unwrap();
    other.execute("SET lock_timeout = '50ms'").await.unwrap();
    let e = pg_error(&mut other, "SELECT * FROM held").await;
    assert_eq!(class(&e), TRANSIENT, "{e}");
    owner.execute("ROLLBACK").await.unwrap();

    pg.exec("CREATE TABLE a (id int); CREATE TABLE b (id int)")
        .await;
    owner.execute("BEGIN; LOCK TABLE a").await.unwrap();
    other
        .execute("RESET lock_timeout; BEGIN; LOCK TABLE b")
        .await
        .unwrap();
    let first = tokio::spawn(async move {
        let r = owner.execute("LOCK TABLE b").await.map(|_| ());
        (owner, r)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = other.execute("LOCK TABLE a").await.map(|_| ());
    let (_owner, first) = first.await.unwrap();
    let e = first
        .err()
        .or(second.err())
        .expect("one of them is the deadlock's victim");
    assert_eq!(class(&e), TRANSIENT, "{e}");
}

#[tokio::test]
async fn errors_from_a_real_mariadb_are_classified_by_error_number() {
    let db = TestMariaDb::start();
    db.create_account("sever", "%", "pw").await;
    db.exec(
        "CREATE DATABASE shop; CREATE TABLE shop.held (id INT PRIMARY KEY) ENGINE=InnoDB; \
             INSERT INTO shop.held VALUES (1)",
    )
    .await;
    let mut conn = MySqlConnection::connect_with(&db.connect_options("sever").password("pw"))
        .await
        .unwrap();

    // KILL of an id that no longer exists (1094): the session is already gone.
    let e = conn.execute("KILL 999999").await.unwrap_err();
    assert_eq!(class(&e), Verdict::Gone, "{e}");

    // Access denied at connect (1045).
    let e = MySqlConnection::connect_with(&db.connect_options("sever").password("wrong"))
        .await
        .unwrap_err();
    assert_eq!(class(&e), UNREACHABLE, "{e}");

    // Will recur: a denied command (1142), syntax (1064), unknown table (1146).
    for sql in [
        "SELECT * FROM shop.held",
        "SELEC 1",
        "SELECT * FROM information_schema.no_such_table",
    ] {
        let e = conn.execute(sql).await.unwrap_err();
        assert_eq!(class(&e), DETERMINISTIC, "{sql}: {e}");
    }

    // May pass: a lock wait timeout (1205).
    let mut owner = db.root_connection().await;
    let mut other = db.root_connection().await;
    owner
        .execute("START TRANSACTION; SELECT * FROM shop.held WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    other
        .execute("SET SESSION innodb_lock_wait_timeout = 1")
        .await
        .unwrap();
    let e = other
        .execute("UPDATE shop.held SET id = 2 WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(class(&e), TRANSIENT, "{e}");
    owner.execute("ROLLBACK").await.unwrap();
}
