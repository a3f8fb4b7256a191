//! A policy's part of a selector step: whether its threshold holds on the target, and which
//! of the selected sessions are its victims this run, within its limit and never more than a
//! quarter of the target's client sessions.

use serde::{Deserialize, Serialize};

use super::SelectRequest;
use crate::select::{Age, Pick, SessionState, When, pick, share_cap};
use crate::terminate::listing::Listed;
use crate::terminate::{Engine, EngineError, SkipReason, Skipped, TerminateOutcome};

/// What a policy's step saw on a target before it picked: reported beside its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Threshold {
    /// Client sessions on the target, sever's own listing connection included.
    pub clients: usize,
    /// Sessions of the selector's logins, in any state.
    pub login_sessions: usize,
    /// The client connection limit, when the policy compares with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Sessions the selector selected (before the victims rule and the limit).
    pub selected: usize,
    /// Whether the policy's `when` held.
    pub met: bool,
    /// The most this run could end here.
    pub cap: usize,
}

/// What the listing says of the target's load: its client sessions (counting the listing's
/// own connection, which holds a slot too) and those of the request's logins.
#[derive(Debug, Clone, Copy)]
pub(super) struct Load {
    /// Client sessions on the target.
    pub clients: usize,
    /// Sessions of the selector's logins (every client session without named logins).
    pub logins: usize,
}

/// The load `listed` (every backend the engine listed) shows.
pub(super) fn load(listed: &[Listed], request: &SelectRequest) -> Load {
    let client = |l: &&Listed| l.guard != Some(SkipReason::SystemBackend);
    let logins = &request.selector.logins;
    Load {
        clients: 1 + listed.iter().filter(client).count(),
        logins: listed
            .iter()
            .filter(client)
            .filter(|l| {
                request.all_logins || l.session.login.as_ref().is_some_and(|n| logins.contains(n))
            })
            .count(),
    }
}

/// Checks the policy's threshold and keeps its victims among `candidates`; the rest are
/// skipped with their reason (`below_threshold`, `not_a_victim`, `over_limit`).
pub(super) async fn victims(
    engine: &dyn Engine,
    request: &SelectRequest,
    pick_by: Pick,
    load: Load,
    outcome: &mut TerminateOutcome,
    candidates: Vec<Listed>,
) -> Result<Vec<Listed>, EngineError> {
    let selected = candidates.len();
    let clients = load.clients;
    let (met, limit) = match pick_by.when {
        When::Always => (true, None),
        When::MatchingAtLeast(n) => (selected >= n, None),
        When::LoginSessionsAbove(n) => (load.logins > n, None),
        When::ConnectionsAbovePercentOfMax(percent) => {
            let limit = engine.connection_limit().await?;
            // clients / limit > percent / 100, in integers.
            let above = (clients as u128) * 100 > u128::from(percent) * u128::from(limit);
            (above, Some(limit))
        }
    };
    let cap = request
        .at_most
        .unwrap_or(usize::MAX)
        .min(share_cap(clients));
    outcome.threshold = Some(Threshold {
        clients,
        login_sessions: load.logins,
        limit,
        selected,
        met,
        cap,
    });
    if !met {
        skip(outcome, candidates, SkipReason::BelowThreshold);
        return Ok(Vec::new());
    }
    let now = chrono::Utc::now();
    let picked = pick(candidates, pick_by.victims, cap, |l: &Listed| Age {
        started: l.session.backend_start,
        id: l.session.pid,
        idle_since: idle_since(l).filter(|t| *t <= now),
    });
    skip(outcome, picked.spared, SkipReason::NotAVictim);
    skip(outcome, picked.over_limit, SkipReason::OverLimit);
    Ok(picked.victims)
}

/// Since when a session has been idle: the start of its current state when that state is
/// one of the idle ones.
fn idle_since(l: &Listed) -> Option<chrono::DateTime<chrono::Utc>> {
    let idle = [
        SessionState::Idle,
        SessionState::IdleInTransaction,
        SessionState::IdleInTransactionAborted,
    ];
    let state = l.session.state.as_deref()?;
    idle.iter()
        .any(|s| s.as_str() == state)
        .then_some(l.impact.state_since)
        .flatten()
}

fn skip(outcome: &mut TerminateOutcome, sessions: Vec<Listed>, reason: SkipReason) {
    outcome
        .skipped
        .extend(sessions.into_iter().map(|l| Skipped {
            session: l.session,
            reason: reason.clone(),
        }));
}
