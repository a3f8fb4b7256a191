//! The selected flow's decisions, guard rails and modes, against an engine kept in memory
//! (the real engines' SQL is tested against real servers in `tests/it`).

use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::*;
use crate::select::{Facts, Seen};
use crate::terminate::listing::Impact;
use crate::terminate::{TerminateOutcome as Outcome, TerminateRequest};

/// One session in the fake engine, and how it answers a cancel.
#[derive(Debug, Clone)]
struct Fake {
    session: Session,
    impact: Impact,
    guard: Option<SkipReason>,
}

/// An engine whose sessions live in memory: `signal` ends or cancels them, and `list`
/// decides them with the real selector.
#[derive(Debug, Default)]
struct Memory {
    sessions: Mutex<Vec<Fake>>,
    signals: Mutex<Vec<(i64, Signal)>>,
    /// Sessions (by pid) that commit, ending their transaction, at the nth listing.
    commits_at: Mutex<Vec<(i64, usize)>>,
    listings: Mutex<usize>,
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn fake(pid: i64, login: &str, app: &str, state: &str, in_transaction: bool) -> Fake {
    Fake {
        session: Session {
            pid,
            login: Some(login.into()),
            login_id: None,
            database: Some("orders".into()),
            application_name: Some(app.into()),
            client_addr: Some("10.0.0.5".into()),
            backend_start: Some(at("2026-12-01T00:00:00Z") + chrono::Duration::seconds(pid)),
            state: Some(state.into()),
        },
        impact: Impact {
            state_since: Some(at("2026-12-01T01:00:00Z")),
            xact_start: in_transaction.then(|| at("2026-12-01T01:00:00Z")),
            query_start: Some(at("2026-12-01T01:00:00Z")),
            ..Impact::default()
        },
        guard: None,
    }
}

impl Memory {
    fn with(sessions: Vec<Fake>) -> Self {
        Self {
            sessions: Mutex::new(sessions),
            ..Self::default()
        }
    }

    fn signals(&self) -> Vec<(i64, Signal)> {
        self.signals.lock().unwrap().clone()
    }
}

#[async_trait]
impl Engine for Memory {
    async fn check(&self) -> Result<(), EngineError> {
        Ok(())
    }

    async fn list(&self, selector: &Selector, _: bool) -> Result<Vec<Listed>, EngineError> {
        let n = {
            let mut n = self.listings.lock().unwrap();
            *n += 1;
            *n
        };
        let mut sessions = self.sessions.lock().unwrap();
        for (pid, when) in self.commits_at.lock().unwrap().iter() {
            if n >= *when
                && let Some(f) = sessions.iter_mut().find(|f| f.session.pid == *pid)
            {
                f.impact.xact_start = None;
                f.session.state = Some("idle".into());
            }
        }
        Ok(sessions
            .iter()
            .map(|f| {
                let mut facts = Facts::unknown(at("2026-12-01T02:00:00Z"));
                facts.pid = Seen::Known(f.session.pid);
                facts.login = f
                    .session
                    .login
                    .as_deref()
                    .map_or(Seen::Unknown, Seen::Known);
                facts.database = f
                    .session
                    .database
                    .as_deref()
                    .map_or(Seen::Absent, Seen::Known);
                facts.application_name = f
                    .session
                    .application_name
                    .as_deref()
                    .map_or(Seen::Absent, Seen::Known);
                facts.client_addr = Facts::addr(f.session.client_addr.as_deref());
                facts.backend_start = f.session.backend_start.map_or(Seen::Unknown, Seen::Known);
                facts.state = f
                    .session
                    .state
                    .as_deref()
                    .and_then(crate::select::SessionState::from_postgres)
                    .map_or(Seen::Unknown, Seen::Known);
                facts.state_since = f.impact.state_since.map_or(Seen::Unknown, Seen::Known);
                facts.xact_start = f.impact.xact_start.map_or(Seen::Absent, Seen::Known);
                Listed {
                    session: f.session.clone(),
                    impact: f.impact.clone(),
                    decision: selector.decide(&facts),
                    guard: f.guard.clone(),
                }
            })
            .collect())
    }

    async fn signal(&self, listed: &[Listed], signal: Signal) -> Result<Vec<Sent>, EngineError> {
        let mut sessions = self.sessions.lock().unwrap();
        let mut sent = Vec::new();
        for l in listed {
            self.signals.lock().unwrap().push((l.session.pid, signal));
            let Some(i) = sessions
                .iter()
                .position(|f| same_session(&f.session, &l.session))
            else {
                sent.push(Sent::Gone);
                continue;
            };
            match signal {
                Signal::Terminate => {
                    sessions.remove(i);
                }
                Signal::Cancel => {
                    // As on PostgreSQL: the statement ends, the transaction stays (aborted).
                    let f = &mut sessions[i];
                    let state = match f.impact.xact_start {
                        Some(_) => "idle in transaction (aborted)",
                        None => "idle",
                    };
                    f.session.state = Some(state.into());
                }
            }
            sent.push(Sent::Signalled);
        }
        Ok(sent)
    }

    async fn terminate(&self, _: &TerminateRequest) -> Result<Outcome, EngineError> {
        unreachable!("the selected flow never calls the rotation path")
    }

    async fn learn_logins(&self, _: &[String]) -> Result<(), EngineError> {
        Ok(())
    }
}

fn request(selector: &str, mode: &str) -> SelectRequest {
    SelectRequest {
        selector: serde_json::from_str(selector).unwrap(),
        all_logins: false,
        ending: serde_json::from_str(mode).unwrap(),
        protected: BTreeSet::from(["ops".to_owned()]),
        dry_run: false,
        verify_timeout: Duration::from_millis(200),
        at_most: None,
        journal: None,
        pick: None,
    }
}

fn reasons(outcome: &Outcome) -> Vec<(i64, String)> {
    let mut r: Vec<(i64, String)> = outcome
        .skipped
        .iter()
        .map(|s| {
            let wire = serde_json::to_value(&s.reason).unwrap();
            let word = match wire.get("rule") {
                Some(rule) => format!(
                    "{}: {}",
                    wire["reason"].as_str().unwrap(),
                    rule.as_str().unwrap()
                ),
                None => wire["reason"].as_str().unwrap().to_owned(),
            };
            (s.session.pid, word)
        })
        .collect();
    r.sort();
    r
}

fn pids(sessions: &[Session]) -> Vec<i64> {
    let mut p: Vec<i64> = sessions.iter().map(|s| s.pid).collect();
    p.sort();
    p
}

#[tokio::test]
async fn every_session_of_the_logins_gets_a_decision_and_the_dry_run_matches_the_real_run() {
    let mut superuser = fake(5, "app", "psql", "idle", false);
    superuser.guard = Some(SkipReason::Superuser);
    superuser.session.backend_start = Some(at("2026-12-01T00:00:00Z"));
    let sessions = vec![
        fake(1, "app", "orders", "idle", false),
        fake(2, "app", "pg_dump", "active", true),
        fake(3, "app", "orders", "active", false),
        fake(4, "other", "orders", "idle", false),
        superuser,
        fake(6, "ops", "orders", "idle", false),
    ];
    let selector = r#"{"logins":["app","ops"],"exclude_application_names":["pg_*"],
                       "started_before":"2026-12-01T00:00:03Z"}"#;
    let engine = Memory::with(sessions);
    let mut dry = request(selector, r#"{"mode":"terminate"}"#);
    dry.dry_run = true;
    let preview = end_selected(&engine, &dry).await.unwrap();
    assert!(engine.signals().is_empty(), "a dry run signals nothing");
    assert_eq!(pids(&preview.matched), [1]);
    let expected = vec![
        (2, "excluded: exclude_application_names: pg_*".to_owned()),
        (3, "not_before_cutoff".to_owned()),
        (5, "superuser".to_owned()),
        (6, "not_before_cutoff".to_owned()),
    ];
    assert_eq!(
        reasons(&preview),
        expected,
        "session 4 is another login's: not reported"
    );

    let done = end_selected(&engine, &request(selector, r#"{"mode":"terminate"}"#))
        .await
        .unwrap();
    assert_eq!(pids(&done.terminated), pids(&preview.matched));
    assert_eq!(reasons(&done), expected);
    assert_eq!(engine.signals(), [(1, Signal::Terminate)]);
    assert!(done.remaining.is_empty());
}

#[tokio::test]
async fn protected_and_unknown_values_are_spared_and_say_so() {
    let mut hidden = fake(2, "app", "orders", "idle", false);
    hidden.session.state = None;
    let engine = Memory::with(vec![fake(1, "ops", "orders", "idle", false), hidden]);
    let out = end_selected(
        &engine,
        &request(r#"{"logins":["app","ops"],"states":["idle"]}"#, "{}"),
    )
    .await
    .unwrap();
    assert_eq!(
        reasons(&out),
        [(1, "protected".to_owned()), (2, "unknown_state".to_owned())]
    );
    assert!(engine.signals().is_empty());
}

#[tokio::test]
async fn guard_rails_refuse_every_session_and_a_grown_selection() {
    let engine = Memory::with(vec![
        fake(1, "a", "batch", "idle", false),
        fake(2, "b", "batch", "idle", false),
    ]);
    let mut every = request(r#"{"application_names":["batch"]}"#, "{}");
    every.all_logins = true;
    let e = end_selected(&engine, &every).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Refused(why) if why.contains("every one")),
        "{e}"
    );

    let engine = Memory::with(vec![
        fake(1, "a", "batch", "idle", false),
        fake(2, "b", "batch", "idle", false),
        fake(3, "c", "web", "idle", false),
    ]);
    every.at_most = Some(1);
    let e = end_selected(&engine, &every).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Refused(why) if why.contains("grew from 1 to 2")),
        "{e}"
    );
    assert!(engine.signals().is_empty());
    every.at_most = Some(2);
    let out = end_selected(&engine, &every).await.unwrap();
    assert_eq!(pids(&out.terminated), [1, 2]);
}

#[tokio::test]
async fn cancel_signals_only_running_statements_and_verifies_they_ended() {
    let engine = Memory::with(vec![
        fake(1, "app", "orders", "active", false),
        fake(2, "app", "orders", "idle", false),
    ]);
    let out = end_selected(
        &engine,
        &request(r#"{"logins":"app"}"#, r#"{"mode":"cancel"}"#),
    )
    .await
    .unwrap();
    assert_eq!(pids(&out.cancelled), [1]);
    assert!(out.terminated.is_empty() && out.remaining.is_empty());
    assert_eq!(reasons(&out), [(2, "no_statement".to_owned())]);
    assert_eq!(engine.signals(), [(1, Signal::Cancel)]);
    assert_eq!(
        engine.sessions.lock().unwrap().len(),
        2,
        "both connections stay"
    );
}

#[tokio::test]
async fn graceful_waits_then_cancels_and_terminates_and_spares_what_stopped_matching() {
    let engine = Memory::with(vec![
        // Idle: nothing to wait for, ended at once.
        fake(1, "app", "orders", "idle", false),
        // Commits during the grace: ended once it holds nothing.
        fake(2, "app", "orders", "idle in transaction", true),
        // Runs a statement in its transaction past the grace: cancelled, then terminated.
        fake(3, "app", "orders", "active", true),
    ]);
    engine.commits_at.lock().unwrap().push((2, 2));
    let out = end_selected(
        &engine,
        &request(
            r#"{"logins":"app"}"#,
            r#"{"mode":"graceful","grace":"500ms"}"#,
        ),
    )
    .await
    .unwrap();
    assert_eq!(pids(&out.terminated), [1, 2, 3]);
    assert_eq!(pids(&out.cancelled), [3]);
    let signals = engine.signals();
    assert_eq!(signals[0], (1, Signal::Terminate), "{signals:?}");
    let of = |pid| -> Vec<Signal> { signals.iter().filter(|s| s.0 == pid).map(|s| s.1).collect() };
    assert_eq!(of(2), [Signal::Terminate], "never cancelled: it committed");
    assert_eq!(of(3), [Signal::Cancel, Signal::Terminate]);

    // Selected for its open transaction: once it commits it is no longer selected, and
    // survives without ever being signalled.
    let engine = Memory::with(vec![
        fake(2, "app", "orders", "idle in transaction", true),
        fake(3, "app", "orders", "idle in transaction", true),
    ]);
    engine.commits_at.lock().unwrap().push((2, 2));
    let out = end_selected(
        &engine,
        &request(
            r#"{"logins":"app","states":"idle_in_transaction"}"#,
            r#"{"mode":"graceful","grace":"500ms"}"#,
        ),
    )
    .await
    .unwrap();
    assert_eq!(reasons(&out), [(2, "excluded: states".to_owned())]);
    assert_eq!(pids(&out.terminated), [3]);
    assert!(
        out.cancelled.is_empty(),
        "session 3 ran no statement to cancel"
    );
    assert!(engine.signals().iter().all(|s| s.0 == 3));
}
