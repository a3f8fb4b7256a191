//! What the listing shows beside a session: what it holds and waits for (its impact), and
//! the selector's decision on it. Kept apart from [`Session`], which is what reports and the
//! audit trail carry: query text and lock waits never enter the trail.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Session;
use crate::select::Decision;

/// What a session holds and waits for, as the engine reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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
