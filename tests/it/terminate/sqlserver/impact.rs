//! The SQL Server listing's impact columns and state fields against the TDS stand-in: a
//! session idle in transaction, one running a request, one blocked by another, the
//! statement text only on request, and a session already rolling back listed with its
//! guard and never `KILL`ed.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use reqwest::StatusCode;
use serde_json::Value;
use sever::config::Config;
use sever::select::{Decision, Ending, Selector, SessionState};
use sever::terminate::selected::{SelectRequest, end_selected};
use sever::terminate::sqlserver::SqlServer;
use sever::terminate::{Engine, Scope, SkipReason, TerminateRequest};
use sever_testkit::tds::{FakeRequest, FakeSession, TdsStandIn};

use super::{fake, server};
use crate::support::scenarios::Database;
use crate::support::sever::{TestServer, Workspace};

/// A session of `login` sleeping inside a transaction that began at `began` (its last
/// request ended then).
fn idle_in_transaction(id: i16, login: &str, began: DateTime<Utc>) -> FakeSession {
    FakeSession {
        transaction_begin_time: Some(began),
        last_request_start_time: Some(began),
        last_request_end_time: Some(began),
        ..fake(id, login, Utc::now() - Duration::hours(1), "sleeping")
    }
}

/// A session of `login` running `text` since `began`, waiting on `blocker` for a lock if
/// not 0.
fn running(id: i16, login: &str, began: DateTime<Utc>, blocker: i16, text: &str) -> FakeSession {
    FakeSession {
        request: Some(FakeRequest {
            status: if blocker == 0 { "running" } else { "suspended" }.into(),
            command: "UPDATE".into(),
            start_time: began,
            wait_type: (blocker != 0).then(|| "LCK_M_X".into()),
            blocking_session_id: blocker,
            text: Some(text.into()),
        }),
        ..fake(id, login, Utc::now() - Duration::hours(1), "running")
    }
}

/// The listing's sessions for `query`, by pid.
async fn listed(server: &TestServer, query: &str) -> (Vec<i64>, Value) {
    let (status, body) = server.operator_get(&format!("/v1/sessions{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    let pids = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    (pids, body)
}

/// The listed session `pid` in `body`.
fn session(body: &Value, pid: i64) -> &Value {
    body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pid"] == pid)
        .unwrap_or_else(|| panic!("no session {pid} in {body}"))
}

/// Whether `field` of `s` is `want`, give or take the `datetime` rounding.
fn near(s: &Value, field: &str, want: DateTime<Utc>) {
    let got: DateTime<Utc> = s[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {s}"))
        .parse()
        .unwrap();
    assert!(
        (got - want).num_milliseconds().abs() < 50,
        "{field}: {got} is not {want}"
    );
}

#[tokio::test]
async fn an_idle_in_transaction_session_is_selected_by_state_and_transaction_age() {
    let db = TdsStandIn::start().await;
    db.set_utc_offset_minutes(-300); // its times are server-local: converted like login_time
    let ws = Workspace::new();
    let began = Utc::now() - Duration::seconds(3);
    db.add_session(idle_in_transaction(60, "app", began));
    db.add_session(fake(61, "app", Utc::now() - Duration::hours(1), "sleeping"));
    let server = server(&db, &ws).await;

    let (pids, body) = listed(&server, "?states=idle_in_transaction&in_transaction_for=2s").await;
    assert_eq!(pids, [60], "{body}");
    let s = session(&body, 60);
    assert_eq!(s["state"], "idle_in_transaction", "{s}");
    near(s, "xact_start", began);
    near(s, "state_since", began);
    assert_eq!(body["summary"][0]["open_transactions"], 1, "{body}");

    let (pids, body) = listed(&server, "?in_transaction_for=10s").await;
    assert!(pids.is_empty(), "{body}");
    let (pids, body) = listed(&server, "?states=idle").await;
    assert_eq!(pids, [61], "{body}");
    assert_eq!(session(&body, 61)["xact_start"], Value::Null, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn an_active_session_is_selected_by_state_and_how_long_it_runs() {
    let db = TdsStandIn::start().await;
    let ws = Workspace::new();
    let began = Utc::now() - Duration::seconds(5);
    db.add_session(running(70, "app", began, 0, "SELECT 1"));
    db.add_session(idle_in_transaction(
        71,
        "app",
        began - Duration::seconds(25),
    ));
    let server = server(&db, &ws).await;

    let (pids, body) = listed(&server, "?states=active").await;
    assert_eq!(pids, [70], "{body}");
    let s = session(&body, 70);
    assert_eq!(s["state"], "active", "{s}");
    near(s, "state_since", began);
    near(s, "query_start", began);
    assert_eq!(s["backend_type"], Value::Null, "{s}");
    let (pids, body) = listed(&server, "?active_for=2s").await;
    assert_eq!(pids, [70], "{body}");
    let (pids, body) = listed(&server, "?active_for=10s").await;
    assert!(pids.is_empty(), "{body}");
    // Idle for 30 s is not active for 2 s, nor idle (a transaction is open).
    let (pids, body) = listed(&server, "?idle_for=2s").await;
    assert!(pids.is_empty(), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_blocked_session_names_its_blocker_and_the_blocker_counts_it() {
    let db = TdsStandIn::start().await;
    let ws = Workspace::new();
    let now = Utc::now();
    db.add_session(idle_in_transaction(80, "app", now - Duration::seconds(20)));
    // The waiter is another login's: the blocker's count is whole all the same.
    db.add_session(running(
        81,
        "other",
        now - Duration::seconds(2),
        80,
        "UPDATE t",
    ));
    let server = server(&db, &ws).await;

    let (pids, body) = listed(&server, "").await;
    assert_eq!(pids, [80, 81], "{body}");
    let (blocker, waiter) = (session(&body, 80), session(&body, 81));
    assert_eq!(waiter["blocked_by"], serde_json::json!([80]), "{waiter}");
    assert_eq!(waiter["wait_event"], "LCK_M_X", "{waiter}");
    assert_eq!(waiter["blocking"], 0, "{waiter}");
    assert_eq!(blocker["blocking"], 1, "{blocker}");
    assert_eq!(blocker["blocked_by"], serde_json::json!([]), "{blocker}");

    let (pids, body) = listed(&server, "?logins=app").await;
    assert_eq!(pids, [80], "{body}");
    assert_eq!(session(&body, 80)["blocking"], 1, "{body}");
    assert_eq!(body["summary"][0]["blocked_sessions"], 1, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn the_statement_text_is_read_only_when_asked_for() {
    let db = TdsStandIn::start().await;
    let ws = Workspace::new();
    let text = "UPDATE customers SET email = 'a@example.com'";
    db.add_session(running(90, "app", Utc::now(), 0, text));
    let server = server(&db, &ws).await;

    let (_, body) = listed(&server, "?include_query=true").await;
    assert_eq!(session(&body, 90)["query"], text, "{body}");
    let (_, body) = listed(&server, "").await;
    assert!(session(&body, 90).get("query").is_none(), "{body}");
    // The choice travels as a parameter; the text never left the server unasked.
    let asked: Vec<String> = db
        .statements()
        .into_iter()
        .filter(|s| s.contains("dm_exec_sql_text"))
        .collect();
    assert_eq!(asked.len(), 2, "{asked:#?}");
    assert!(
        asked[0].ends_with("| @P1=1") && asked[1].ends_with("| @P1=0"),
        "{asked:#?}"
    );
    server.stop().await;
}

/// The engine a `[targets.main]` table for `db` describes.
async fn engine(db: &TdsStandIn, ws: &Workspace) -> SqlServer {
    let config = Config::parse(&Database::target(db, ws, "main").await).unwrap();
    let target = &config.targets["main"];
    SqlServer::new(
        &target.url.load("url").unwrap(),
        target,
        &config.termination,
    )
    .unwrap()
}

#[tokio::test]
async fn a_session_rolling_back_is_listed_with_its_guard_and_never_killed() {
    let db = TdsStandIn::start().await;
    let ws = Workspace::new();
    let mut killed = running(95, "app", Utc::now(), 0, "DELETE FROM big");
    if let Some(r) = killed.request.as_mut() {
        r.command = "KILLED/ROLLBACK".into();
    }
    db.add_session(killed);
    db.add_session(running(96, "app", Utc::now(), 0, "SELECT 1"));
    let server = server(&db, &ws).await;
    let (pids, body) = listed(&server, "?states=active").await;
    assert_eq!(pids, [95, 96], "{body}");
    server.stop().await;

    let engine = engine(&db, &ws).await;
    let selector = Selector {
        logins: vec!["app".into()],
        states: vec![SessionState::Active],
        ..Default::default()
    };
    let listed = engine.list(&selector, false).await.unwrap();
    let guard = |pid: i64| {
        let l = listed.iter().find(|l| l.session.pid == pid).unwrap();
        assert_eq!(l.decision, Decision::Selected, "{l:?}");
        l.guard.clone()
    };
    assert_eq!(guard(95), Some(SkipReason::RollingBack));
    assert_eq!(guard(96), None);

    let request = SelectRequest {
        selector,
        all_logins: false,
        ending: Ending::TERMINATE,
        protected: Default::default(),
        dry_run: false,
        verify_timeout: StdDuration::from_secs(3),
        at_most: None,
        journal: None,
        pick: None,
    };
    let outcome = end_selected(&engine, &request).await.unwrap();
    let ended: Vec<i64> = outcome.terminated.iter().map(|s| s.pid).collect();
    assert_eq!(ended, [96], "{outcome:?}");
    assert!(
        outcome
            .skipped
            .iter()
            .any(|s| s.session.pid == 95 && s.reason == SkipReason::RollingBack),
        "{outcome:?}"
    );
    assert!(db.sessions().iter().any(|s| s.session_id == 95));
    let kills: Vec<String> = db
        .statements()
        .into_iter()
        .filter(|s| s.starts_with("KILL"))
        .collect();
    assert_eq!(kills, ["KILL 96"], "{kills:?}");

    // The rotation path reads the request too: a killed session is never KILLed again.
    db.add_session(running(97, "app", Utc::now(), 0, "SELECT 2"));
    let rotation = TerminateRequest {
        logins: vec!["app".into()],
        scope: Scope::All,
        protected: Default::default(),
        dry_run: false,
        verify_timeout: StdDuration::from_secs(3),
        refine_cutoff: false,
        journal: None,
        roles: None,
    };
    let outcome = engine.terminate(&rotation).await.unwrap();
    let ended: Vec<i64> = outcome.terminated.iter().map(|s| s.pid).collect();
    assert_eq!(ended, [97], "{outcome:?}");
    assert!(
        outcome
            .skipped
            .iter()
            .any(|s| s.session.pid == 95 && s.reason == SkipReason::RollingBack),
        "{outcome:?}"
    );
    let kills: Vec<String> = db
        .statements()
        .into_iter()
        .filter(|s| s.starts_with("KILL"))
        .collect();
    assert_eq!(kills, ["KILL 96", "KILL 97"], "{kills:?}");
}
