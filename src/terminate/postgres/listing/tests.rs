//! Against a real throwaway PostgreSQL: sessions held in the states the selector names.

use std::time::Duration;

use secrecy::SecretString;
use sever_testkit::pg::TestPostgres;
use sqlx::Executor;

use super::*;
use crate::config::{TargetConfig, TerminationConfig};
use crate::store::Store;

async fn engine(pg: &TestPostgres, login: &str) -> (tempfile::TempDir, Postgres) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let store = Store::connect(&SecretString::from(url)).await.unwrap();
    let url = pg.url(login, "pw", "postgres");
    let target: TargetConfig =
        toml::from_str(&format!("engine = \"postgres\"\nurl = \"{url}\"")).unwrap();
    let pg = Postgres::new(
        "main",
        &SecretString::from(url),
        &target,
        &TerminationConfig::default(),
        store,
    )
    .unwrap();
    (dir, pg)
}

fn selector(json: &str) -> Selector {
    serde_json::from_str(json).unwrap()
}

fn find(listed: &[Listed], pid: i32) -> &Listed {
    listed
        .iter()
        .find(|l| l.session.pid == i64::from(pid))
        .unwrap_or_else(|| panic!("pid {pid} not listed: {listed:?}"))
}

#[tokio::test]
async fn impact_and_decisions_on_sessions_held_in_each_state() {
    let pg = TestPostgres::start();
    pg.exec("CREATE ROLE lister LOGIN PASSWORD 'pw' IN ROLE pg_read_all_stats")
        .await;
    pg.exec("CREATE ROLE nosee LOGIN PASSWORD 'pw'").await;
    pg.create_login("app", "pw").await;
    pg.exec("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0); GRANT ALL ON t TO app")
        .await;

    let (mut holder, holder_pid) = pg.session("app", "pw", "postgres", "orders-api").await;
    holder
        .execute("BEGIN; UPDATE t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    let (mut waiter, waiter_pid) = pg.session("app", "pw", "postgres", "orders-worker").await;
    let blocked = tokio::spawn(async move {
        let _ = waiter.execute("UPDATE t SET v = 2 WHERE id = 1").await;
        waiter
    });
    let (_idle, idle_pid) = pg.session("app", "pw", "postgres", "pg_dump").await;
    let (mut sleeper, sleeper_pid) = pg.session("app", "pw", "postgres", "report").await;
    let sleeping = tokio::spawn(async move {
        let _ = sleeper.execute("SELECT pg_sleep(60)").await;
    });
    // Until the waiter shows as waiting on the holder's lock and the sleeper as active.
    let (_dir, lister) = engine(&pg, "lister").await;
    let all = Selector::default();
    let mut listed = Vec::new();
    for _ in 0..200 {
        listed = lister.list_sessions(&all, false).await.unwrap();
        let waiting = find(&listed, waiter_pid).impact.blocked_by == [i64::from(holder_pid)];
        let active = find(&listed, sleeper_pid).session.state.as_deref() == Some("active");
        if waiting && active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let holder_row = find(&listed, holder_pid);
    assert_eq!(holder_row.impact.blocking, 1);
    assert_eq!(
        holder_row.session.state.as_deref(),
        Some("idle in transaction")
    );
    assert!(holder_row.impact.xact_start.is_some());
    let waiter_row = find(&listed, waiter_pid);
    assert_eq!(waiter_row.impact.blocked_by, [i64::from(holder_pid)]);
    assert_eq!(
        waiter_row.impact.wait_event.as_deref(),
        Some("Lock:transactionid")
    );
    assert_eq!(find(&listed, idle_pid).impact.xact_start, None);
    assert!(
        listed.iter().all(|l| l.impact.query.is_none()),
        "query text only when asked for"
    );
    let with_query = lister.list_sessions(&all, true).await.unwrap();
    assert!(
        find(&with_query, sleeper_pid)
            .impact
            .query
            .as_deref()
            .is_some_and(|q| q.contains("pg_sleep"))
    );

    let decided = |json: &str| {
        let s = selector(json);
        let pids = [holder_pid, waiter_pid, idle_pid, sleeper_pid];
        let lister = &lister;
        async move {
            let listed = lister.list_sessions(&s, false).await.unwrap();
            pids.map(|p| find(&listed, p).decision.clone())
        }
    };
    let yes = Decision::Selected;
    let out = |rule: &str| Decision::Excluded(rule.into());
    assert_eq!(
        decided(r#"{"logins": "app", "exclude_application_names": "pg_*"}"#).await,
        [
            yes.clone(),
            yes.clone(),
            out("exclude_application_names: pg_*"),
            yes.clone()
        ]
    );
    assert_eq!(
        decided(r#"{"states": "idle_in_transaction", "in_transaction_for": "0s"}"#).await,
        [yes.clone(), out("states"), out("states"), out("states")]
    );
    assert_eq!(
        decided(r#"{"in_transaction_for": "1h"}"#).await,
        [
            out("in_transaction_for"),
            out("in_transaction_for"),
            out("in_transaction_for"),
            out("in_transaction_for")
        ]
    );
    assert_eq!(
        decided(r#"{"active_for": "0s", "application_names": "rep*"}"#).await[3],
        yes
    );
    assert_eq!(
        decided(r#"{"client_addrs": "127.0.0.0/8"}"#).await,
        [yes.clone(), yes.clone(), yes.clone(), yes.clone()],
        "the test sessions connect over TCP to 127.0.0.1"
    );

    // Without pg_read_all_stats another role's state and address are unknown: spared by the
    // inclusion and by the exclusion alike, and named.
    let (_dir2, blind) = engine(&pg, "nosee").await;
    let listed = blind
        .list_sessions(&selector(r#"{"states": "idle"}"#), false)
        .await
        .unwrap();
    assert_eq!(find(&listed, idle_pid).decision, Decision::Unknown("state"));
    let listed = blind
        .list_sessions(
            &selector(r#"{"exclude_databases": "other", "idle_for": "0s"}"#),
            false,
        )
        .await
        .unwrap();
    assert_eq!(find(&listed, idle_pid).decision, Decision::Unknown("state"));
    // Selected by every field that could be read, but its kind of backend is hidden too.
    let listed = blind.list_sessions(&all, false).await.unwrap();
    assert_eq!(
        find(&listed, idle_pid).decision,
        Decision::Unknown("backend_type")
    );
    // The application name is shown to every role, so it still decides.
    let listed = blind
        .list_sessions(
            &selector(r#"{"exclude_application_names": "pg_dump"}"#),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        find(&listed, idle_pid).decision,
        out("exclude_application_names: pg_dump")
    );

    pg.exec(&format!("SELECT pg_cancel_backend({sleeper_pid})"))
        .await;
    holder.execute("ROLLBACK").await.unwrap();
    drop(blocked.await.unwrap());
    sleeping.await.unwrap();
}

#[tokio::test]
async fn every_field_and_duration_on_sessions_held_for_seconds() {
    let pg = TestPostgres::start();
    pg.exec("CREATE ROLE lister LOGIN PASSWORD 'pw' IN ROLE pg_read_all_stats")
        .await;
    pg.create_login("app", "pw").await;
    pg.create_login("batch", "pw").await;
    pg.exec("CREATE DATABASE other").await;
    pg.exec("GRANT CONNECT ON DATABASE other TO app").await;
    let (_dir, lister) = engine(&pg, "lister").await;

    let (mut in_tx, in_tx_pid) = pg.session("app", "pw", "postgres", "orders").await;
    in_tx.execute("BEGIN; SELECT 1").await.unwrap();
    let (mut aborted, aborted_pid) = pg.session("app", "pw", "postgres", "orders").await;
    aborted.execute("BEGIN").await.unwrap();
    assert!(aborted.execute("SELECT 1/0").await.is_err());
    let (_idle, idle_pid) = pg.session("app", "pw", "other", "orders").await;
    let (mut sleeper, sleeper_pid) = pg.session("batch", "pw", "postgres", "etl").await;
    let sleeping = tokio::spawn(async move {
        let _ = sleeper.execute("SELECT pg_sleep(30)").await;
    });
    let (mut admin, _) = pg.session("postgres", "", "postgres", "").await;
    let between: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let (_late, late_pid) = pg.session("app", "pw", "postgres", "orders").await;
    // Three seconds in those states, as the selector's durations count them.
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let pids = [in_tx_pid, aborted_pid, idle_pid, sleeper_pid, late_pid];
    let decided = |json: String| {
        let s = selector(&json);
        let lister = &lister;
        async move {
            let listed = lister.list_sessions(&s, false).await.unwrap();
            pids.map(|p| find(&listed, p).decision == Decision::Selected)
        }
    };
    let cases = [
        // in_tx, aborted, idle, sleeper, late
        // A running statement is a transaction too (xact_start is set); an aborted one
        // shows none.
        (
            r#"{"in_transaction_for": "2s"}"#.to_owned(),
            [true, false, false, true, false],
        ),
        (r#"{"in_transaction_for": "10s"}"#.to_owned(), [false; 5]),
        (
            r#"{"idle_for": "2s"}"#.to_owned(),
            [false, false, true, false, true],
        ),
        (
            r#"{"active_for": "2s"}"#.to_owned(),
            [false, false, false, true, false],
        ),
        (r#"{"active_for": "1m"}"#.to_owned(), [false; 5]),
        (
            r#"{"states": "idle_in_transaction_aborted"}"#.to_owned(),
            [false, true, false, false, false],
        ),
        (
            r#"{"states": ["idle", "active"], "logins": "app"}"#.to_owned(),
            [false, false, true, false, true],
        ),
        (
            r#"{"databases": "other"}"#.to_owned(),
            [false, false, true, false, false],
        ),
        (
            r#"{"exclude_databases": "other", "exclude_logins": "batch"}"#.to_owned(),
            [true, true, false, false, true],
        ),
        (
            format!(r#"{{"started_before": "{}"}}"#, between.to_rfc3339()),
            [true, true, true, true, false],
        ),
        (
            format!(r#"{{"started_after": "{}"}}"#, between.to_rfc3339()),
            [false, false, false, false, true],
        ),
        (
            r#"{"application_names": ["e*l", "nope"]}"#.to_owned(),
            [false, false, false, true, false],
        ),
        (r#"{"client_addrs": "10.0.0.0/8"}"#.to_owned(), [false; 5]),
        (r#"{"client_addrs": "127.0.0.1"}"#.to_owned(), [true; 5]),
        // Exclusions win over every inclusion.
        (
            r#"{"logins": "app", "exclude_application_names": "ord*"}"#.to_owned(),
            [false; 5],
        ),
    ];
    for (json, expected) in cases {
        assert_eq!(decided(json.clone()).await, expected, "{json}");
    }
    pg.exec(&format!("SELECT pg_cancel_backend({sleeper_pid})"))
        .await;
    sleeping.await.unwrap();
}
