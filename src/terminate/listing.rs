//! What the listing shows beside a session: what it holds and waits for (its impact), and
//! the selector's decision on it. Kept apart from [`Session`], which is what reports and the
//! audit trail carry: query text and lock waits never enter the trail.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{EngineError, EngineKind, Session, SkipReason, TargetError, Targets};
use crate::select::{Decision, Selector, SessionRef};

/// What a session holds and waits for, as the engine reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Impact {
    /// When the session entered its current state.
    pub state_since: Option<DateTime<Utc>>,
    /// When its open transaction began; `None` with none open (or not visible).
    pub xact_start: Option<DateTime<Utc>>,
    /// When its current or last statement began.
    pub query_start: Option<DateTime<Utc>>,
    /// What it waits for, in the engine's words (`Lock:transactionid`).
    pub wait_event: Option<String>,
    /// The sessions it waits on for a lock.
    pub blocked_by: Vec<i64>,
    /// How many sessions wait on it for a lock.
    pub blocking: u32,
    /// The engine's kind of backend (`client backend`), where it has one.
    pub backend_type: Option<String>,
    /// The statement text, only when asked for: it can hold personal data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The engine's id of the running statement (MariaDB's `QUERY_ID`), so a cancel ends
    /// the statement that was selected and its verification sees a new one as new.
    #[serde(skip)]
    pub statement_id: Option<i64>,
}

/// One session as listed: who it is, its impact, and whether the selector selects it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The session.
    pub session: Session,
    /// What it holds and waits for.
    pub impact: Impact,
    /// The selector's decision.
    pub decision: Decision,
    /// Why the engine would never signal it whatever the selector says (sever's own
    /// session, a superuser's, one already rolling back, a non-client backend).
    pub guard: Option<SkipReason>,
}

/// Fills in each session's `blocking` from the others' `blocked_by`, over every session the
/// engine listed (not only those selected), so a blocker's count is whole.
pub fn count_blocking(listed: &mut [Listed]) {
    let mut waiting: BTreeMap<i64, u32> = BTreeMap::new();
    for l in listed.iter() {
        for pid in &l.impact.blocked_by {
            *waiting.entry(*pid).or_default() += 1;
        }
    }
    for l in listed.iter_mut() {
        l.impact.blocking = waiting.get(&l.session.pid).copied().unwrap_or(0);
    }
}

/// A listed session and the target it is on, with its impact (the listing's row).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ListedSession {
    /// Target id.
    pub target: String,
    /// The session.
    #[serde(flatten)]
    pub session: Session,
    /// What it holds and waits for.
    #[serde(flatten)]
    pub impact: Impact,
}

/// A session the selector could not decide on, so it was left out.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Undecided {
    /// Target id.
    pub target: String,
    /// The session's id.
    pub pid: i64,
    /// Its login, when known.
    pub login: Option<String>,
    /// `unknown_<field>`: the value the selector needed and could not read.
    pub reason: String,
}

/// One login's selected sessions on one target, and what they hold.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Summary {
    /// Target id.
    pub target: String,
    /// The login (`null` for sessions of a dropped login sever never knew).
    pub login: Option<String>,
    /// Its selected sessions.
    pub sessions: u32,
    /// How many of them have a transaction open.
    pub open_transactions: u32,
    /// When the oldest of those transactions began.
    pub oldest_xact_start: Option<DateTime<Utc>>,
    /// How many sessions (of any login) wait on a lock one of them holds.
    pub blocked_sessions: u32,
}

/// The listing across targets: per-login summaries first, then the sessions, the sessions
/// left out because a value was unknown, and the targets that failed.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct SessionsReport {
    /// Per target and login, in that order.
    pub summary: Vec<Summary>,
    /// Selected sessions, grouped by target in id order.
    pub sessions: Vec<ListedSession>,
    /// Sessions the selector could not decide on.
    pub unknown: Vec<Undecided>,
    /// Targets that could not be listed.
    pub errors: Vec<TargetError>,
}

impl SessionsReport {
    /// Adds one target's listing: its selected sessions, its undecided ones, and a summary
    /// per login whose `blocked_sessions` counts every waiter the target listed.
    pub fn add(&mut self, target: &str, listed: Vec<Listed>) {
        let mut by_login: BTreeMap<Option<String>, Summary> = BTreeMap::new();
        let selected: Vec<&Listed> = listed
            .iter()
            .filter(|l| l.decision == Decision::Selected)
            .collect();
        for l in &selected {
            let s = by_login
                .entry(l.session.login.clone())
                .or_insert_with(|| Summary {
                    target: target.to_owned(),
                    login: l.session.login.clone(),
                    sessions: 0,
                    open_transactions: 0,
                    oldest_xact_start: None,
                    blocked_sessions: 0,
                });
            s.sessions += 1;
            if let Some(start) = l.impact.xact_start {
                s.open_transactions += 1;
                s.oldest_xact_start = Some(s.oldest_xact_start.map_or(start, |o| o.min(start)));
            }
        }
        for waiter in &listed {
            let blockers: std::collections::BTreeSet<&Option<String>> = selected
                .iter()
                .filter(|b| waiter.impact.blocked_by.contains(&b.session.pid))
                .map(|b| &b.session.login)
                .collect();
            for login in blockers {
                if let Some(s) = by_login.get_mut(login) {
                    s.blocked_sessions += 1;
                }
            }
        }
        self.summary.extend(by_login.into_values());
        for l in listed {
            match &l.decision {
                Decision::Selected => self.sessions.push(ListedSession {
                    target: target.to_owned(),
                    session: l.session,
                    impact: l.impact,
                }),
                Decision::Unknown(_) => self.unknown.push(Undecided {
                    target: target.to_owned(),
                    pid: l.session.pid,
                    login: l.session.login,
                    reason: l.decision.reason().unwrap_or_default(),
                }),
                Decision::Excluded(_) => {}
            }
        }
    }
}

impl Targets {
    /// The sessions `selector` selects on `target` (or every target), listed concurrently;
    /// a target that fails is reported beside the others' sessions, and one that cannot
    /// evaluate the selector refuses the whole listing.
    pub async fn list(
        &self,
        target: Option<&str>,
        selector: &Selector,
        include_query: bool,
        timeout: Duration,
    ) -> Result<SessionsReport, Refused> {
        let chosen = self
            .iter()
            .filter(|(id, _)| target.is_none_or(|t| t == id.as_str()));
        let results = futures_util::future::join_all(chosen.map(|(id, engine)| async move {
            let listing = engine.list(selector, include_query);
            let result = match tokio::time::timeout(timeout, listing).await {
                Ok(result) => result,
                Err(_) => Err(EngineError::Timeout(timeout)),
            };
            (id.clone(), result)
        }))
        .await;
        let mut report = SessionsReport::default();
        for (target, result) in results {
            match result {
                Ok(listed) => report.add(&target, listed),
                Err(EngineError::Unsupported(why)) => return Err(Refused { target, why }),
                Err(e) => report.errors.push(TargetError {
                    target,
                    error: e.to_string(),
                }),
            }
        }
        Ok(report)
    }
}

/// A target that cannot evaluate the selector as given (found only by asking it, such as
/// a MariaDB server without `performance_schema`): the whole listing is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target {target:?} cannot evaluate the selector: {why}")]
pub struct Refused {
    /// Target id.
    pub target: String,
    /// Which field, and why.
    pub why: String,
}

/// Why an engine cannot evaluate a selector field, or `None` when it can. Checked before
/// anything is connected, so such a request is refused by name instead of half-answered.
pub fn unsupported(engine: EngineKind, field: &str) -> Option<&'static str> {
    match (engine, field) {
        (EngineKind::Mysql, "started_before" | "started_after") => {
            Some("MySQL and MariaDB record no connection start time")
        }
        _ => None,
    }
}

/// Why `sessions` as given cannot name sessions on `engine`, or `None` when it can. Checked
/// before anything is connected: where the engine records a start time, a ref must carry it
/// (ids are reused, and the id alone could reach whoever connected under it since); where
/// it records none, a ref carrying one could never match.
pub fn unsupported_sessions(engine: EngineKind, sessions: &[SessionRef]) -> Option<String> {
    let records_start = !matches!(engine, EngineKind::Mysql);
    let wrong = sessions
        .iter()
        .find(|r| r.backend_start.is_some() != records_start)?;
    Some(if records_start {
        format!(
            "{wrong} has no backend_start: session ids are reused, so a session is named by \
             its pid and its exact backend_start as the listing shows them"
        )
    } else {
        format!(
            "{wrong} has a backend_start, but MySQL and MariaDB record no connection start \
             time: name the session by its id alone (ids only rise until a restart)"
        )
    })
}
