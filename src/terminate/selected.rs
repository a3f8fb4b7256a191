//! Ending the sessions a selector selects, on any engine, in the request's mode: list and
//! decide ([`Engine::list`]), spare what must be spared, record in the journal, signal
//! ([`Engine::signal`]), verify by listing again. Every session the listing showed for the
//! request's logins leaves with a decision: ended (`terminated`, `cancelled`), would be
//! ended (dry run, `matched`), or skipped with its reason.
//!
//! The rotation path ([`Engine::terminate`]) stays apart: it is set-based, one round trip
//! from list to signal, and matches dropped roles by oid. This path serves operators and
//! policies, where seeing why each session was chosen matters more than a round trip.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::listing::Listed;
use super::{
    Engine, EngineError, Failed, Journal, Poll, Scope, Sent, Session, Signal, SkipReason, Skipped,
    TerminateOutcome, record_intent, same_session,
};
use crate::select::{Decision, Ending, Mode, Pick, Selector, SessionState};

mod pick;

pub use pick::Threshold;

/// How often a graceful step looks again at the sessions it waits for.
const GRACE_POLL: Duration = Duration::from_millis(200);

/// The longest a graceful step waits for its cancels to land before it terminates.
const CANCEL_SETTLE: Duration = Duration::from_secs(2);

/// What a selector step does on one target.
#[derive(Debug, Clone)]
pub struct SelectRequest {
    /// Which sessions.
    pub selector: Selector,
    /// The selector names no login: every login's sessions are candidates, and one that
    /// would reach every client session of the target is refused.
    pub all_logins: bool,
    /// How they are ended.
    pub ending: Ending,
    /// Logins never ended, whatever else matches.
    pub protected: BTreeSet<String>,
    /// Report what would be ended, change nothing.
    pub dry_run: bool,
    /// How long to wait for the signalled sessions (or statements) to disappear.
    pub verify_timeout: Duration,
    /// The most sessions this target may end: its count in the dry run the request was
    /// checked against. More is refused, since the selection grew since it was seen.
    pub at_most: Option<usize>,
    /// Where the sessions about to be terminated are recorded first, if anywhere.
    pub journal: Option<Arc<dyn Journal>>,
    /// A policy's step: its threshold and victims. `at_most` then caps the victims instead
    /// of refusing a grown selection, and a quarter of the target's client sessions caps
    /// them too.
    pub pick: Option<Pick>,
}

/// Ends what `request` selects on `engine`, and reports every session it considered.
pub async fn end_selected(
    engine: &dyn Engine,
    request: &SelectRequest,
) -> Result<TerminateOutcome, EngineError> {
    let listed = engine.list(&request.selector, false).await?;
    let load = pick::load(&listed, request);
    let mut outcome = TerminateOutcome::default();
    // The sessions any revocation could end there: not guarded, not protected.
    let endable = listed
        .iter()
        .filter(|l| l.guard.is_none())
        .filter(|l| {
            l.session
                .login
                .as_ref()
                .is_some_and(|n| !request.protected.contains(n))
        })
        .count();
    let mut candidates = Vec::new();
    for l in listed {
        if !reported(&l, request) {
            continue;
        }
        match spared(&l, request) {
            Some(reason) => outcome.skipped.push(Skipped {
                session: l.session,
                reason,
            }),
            None => candidates.push(l),
        }
    }
    let policy_cap = request.pick.is_some();
    if request.all_logins && !policy_cap && !candidates.is_empty() && candidates.len() >= endable {
        return Err(EngineError::Refused(format!(
            "the selection reaches every one of the {endable} session(s) sever could end on \
             this target; narrow it, or name the logins"
        )));
    }
    if let Some(at_most) = request.at_most.filter(|_| !policy_cap)
        && candidates.len() > at_most
    {
        return Err(EngineError::Refused(format!(
            "the selection grew from {at_most} to {} session(s) since it was checked; \
             nothing was ended",
            candidates.len()
        )));
    }
    if request.ending.mode == Mode::Cancel {
        let (running, idle): (Vec<Listed>, Vec<Listed>) = candidates.into_iter().partition(running);
        candidates = running;
        outcome.skipped.extend(idle.into_iter().map(|l| Skipped {
            session: l.session,
            reason: SkipReason::NoStatement,
        }));
    }
    if let Some(pick_by) = request.pick {
        candidates =
            pick::victims(engine, request, pick_by, load, &mut outcome, candidates).await?;
    }
    outcome.matched = candidates.iter().map(|l| l.session.clone()).collect();
    if request.dry_run || candidates.is_empty() {
        return Ok(outcome);
    }
    match request.ending.mode {
        Mode::Terminate => {
            terminate(engine, request, &mut outcome, candidates).await?;
        }
        Mode::Cancel => {
            let cancelled = send(engine, &mut outcome, candidates, Signal::Cancel).await?;
            outcome.remaining = statements_left(engine, &cancelled, request.verify_timeout)
                .await?
                .into_iter()
                .map(|l| l.session)
                .collect();
        }
        Mode::Graceful => graceful(engine, request, &mut outcome, candidates).await?,
    }
    if !outcome.terminated.is_empty() {
        outcome.remaining = sessions_left(engine, &outcome.terminated, request.verify_timeout)
            .await?
            .into_iter()
            .chain(std::mem::take(&mut outcome.remaining))
            .collect();
    }
    Ok(outcome)
}

/// A credential's graceful rotation, before the rotation path ends the sessions: waits up to
/// `grace`, signalling nothing, until the sessions of `logins` in `scope` hold no statement
/// and no transaction; then cancels the statements still running. Ends nothing itself; the
/// outcome carries the cancelled sessions and a note of what the grace did.
pub async fn let_finish(
    engine: &dyn Engine,
    logins: &[String],
    scope: Scope,
    grace: Duration,
    protected: &BTreeSet<String>,
) -> Result<TerminateOutcome, EngineError> {
    let selector = Selector {
        logins: logins.to_vec(),
        started_before: match scope {
            Scope::All => None,
            Scope::Before(at) => Some(at),
        },
        ..Selector::default()
    };
    let chosen = |listed: Vec<Listed>| -> (Vec<Listed>, bool) {
        let unknown_start = listed
            .iter()
            .any(|l| l.decision == Decision::Unknown("backend_start"));
        let busy_now = listed
            .into_iter()
            .filter(|l| l.decision == Decision::Selected && l.guard.is_none())
            .filter(|l| {
                l.session
                    .login
                    .as_ref()
                    .is_some_and(|n| !protected.contains(n))
            })
            .filter(busy)
            .collect();
        (busy_now, unknown_start)
    };
    let deadline = tokio::time::Instant::now() + grace;
    let mut outcome = TerminateOutcome::default();
    let (mut waiting, unknown_start) = chosen(engine.list(&selector, false).await?);
    if unknown_start {
        outcome.notes.push(
            "the grace could not wait for sessions whose start time is unreadable (MySQL and \
             MariaDB record none): they were ended at once"
                .into(),
        );
    }
    while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
        let left = deadline - tokio::time::Instant::now();
        tokio::time::sleep(GRACE_POLL.min(left)).await;
        waiting = chosen(engine.list(&selector, false).await?).0;
    }
    let running: Vec<Listed> = waiting.into_iter().filter(running).collect();
    if running.is_empty() {
        return Ok(outcome);
    }
    match engine.signal(&running, Signal::Cancel).await {
        // SQL Server has no cancel: the rotation path KILLs what is left.
        Err(EngineError::Unsupported(_)) => return Ok(outcome),
        Err(e) => return Err(e),
        Ok(sent) => {
            let cancelled: Vec<Listed> = running
                .into_iter()
                .zip(sent)
                .filter(|(_, sent)| *sent == Sent::Signalled)
                .map(|(l, _)| l)
                .collect();
            outcome
                .cancelled
                .extend(cancelled.iter().map(|l| l.session.clone()));
            statements_left(engine, &cancelled, CANCEL_SETTLE).await?;
        }
    }
    outcome.notes.push(format!(
        "{} statement(s) still running when the grace of {} ran out were cancelled first",
        outcome.cancelled.len(),
        humantime::format_duration(grace)
    ));
    Ok(outcome)
}

/// Whether a listed session belongs in the report: every session of the named logins
/// (whatever else the selector says of it), or every session when no login is named.
fn reported(l: &Listed, request: &SelectRequest) -> bool {
    request.all_logins || l.decision != Decision::Excluded("logins".into())
}

/// Why a listed session is not ended, or `None` when it is.
fn spared(l: &Listed, request: &SelectRequest) -> Option<SkipReason> {
    match &l.decision {
        Decision::Excluded(rule) => return Some(excluded(rule)),
        Decision::Unknown(field) => return Some(SkipReason::Unknown((*field).to_owned())),
        Decision::Selected => {}
    }
    if let Some(guard) = &l.guard {
        return Some(guard.clone());
    }
    match &l.session.login {
        None => Some(SkipReason::LoginUnknown),
        Some(login) if request.protected.contains(login) => Some(SkipReason::Protected),
        Some(_) => None,
    }
}

/// `started_before` is the cutoff's rule: a session that does not meet it connected after
/// the cutoff, which reports say in their own word.
fn excluded(rule: &str) -> SkipReason {
    match rule {
        "started_before" => SkipReason::NotBeforeCutoff,
        _ => SkipReason::Excluded(rule.to_owned()),
    }
}

/// Running a statement now.
fn running(l: &Listed) -> bool {
    l.session.state.as_deref() == Some(SessionState::Active.as_str())
}

/// Running a statement or holding a transaction open: what a grace waits for.
fn busy(l: &Listed) -> bool {
    running(l) || l.impact.xact_start.is_some()
}

/// Records `batch` in the journal, then terminates it.
async fn terminate(
    engine: &dyn Engine,
    request: &SelectRequest,
    outcome: &mut TerminateOutcome,
    batch: Vec<Listed>,
) -> Result<(), EngineError> {
    let sessions: Vec<Session> = batch.iter().map(|l| l.session.clone()).collect();
    record_intent(request.journal.as_deref(), &sessions).await?;
    send(engine, outcome, batch, Signal::Terminate).await?;
    Ok(())
}

/// Signals `batch` and files each session by what came of it; returns those signalled.
async fn send(
    engine: &dyn Engine,
    outcome: &mut TerminateOutcome,
    batch: Vec<Listed>,
    signal: Signal,
) -> Result<Vec<Listed>, EngineError> {
    if batch.is_empty() {
        return Ok(batch);
    }
    let results = engine.signal(&batch, signal).await?;
    let mut signalled = Vec::new();
    for (l, sent) in batch.into_iter().zip(results) {
        match sent {
            Sent::Signalled => {
                match signal {
                    Signal::Cancel => outcome.cancelled.push(l.session.clone()),
                    Signal::Terminate => outcome.terminated.push(l.session.clone()),
                }
                signalled.push(l);
            }
            Sent::Gone => outcome.skipped.push(Skipped {
                session: l.session,
                reason: SkipReason::AlreadyGone,
            }),
            Sent::Refused(error) => outcome.failed.push(Failed {
                session: l.session,
                error,
            }),
        }
    }
    Ok(signalled)
}

/// `graceful`: ends each session as soon as it holds nothing (no statement, no transaction),
/// without signalling it before; when the grace runs out, cancels the statements still
/// running, gives the cancels a moment, and terminates what is left. A session that stops
/// matching the selector while it waits (it committed, and the selector asked for open
/// transactions) is spared with the rule it no longer meets.
async fn graceful(
    engine: &dyn Engine,
    request: &SelectRequest,
    outcome: &mut TerminateOutcome,
    mut waiting: Vec<Listed>,
) -> Result<(), EngineError> {
    let deadline = tokio::time::Instant::now() + request.ending.grace();
    loop {
        let (quiet, busy_now): (Vec<Listed>, Vec<Listed>) =
            waiting.into_iter().partition(|l| !busy(l));
        terminate(engine, request, outcome, quiet).await?;
        waiting = busy_now;
        let now = tokio::time::Instant::now();
        if waiting.is_empty() || now >= deadline {
            break;
        }
        tokio::time::sleep(GRACE_POLL.min(deadline - now)).await;
        waiting = refresh(engine, request, outcome, waiting).await?;
    }
    if waiting.is_empty() {
        return Ok(());
    }
    let (statements, in_transaction): (Vec<Listed>, Vec<Listed>) =
        waiting.into_iter().partition(running);
    let cancelled = match engine.signal(&statements, Signal::Cancel).await {
        // SQL Server has no cancel: what is left is terminated after the grace.
        Err(EngineError::Unsupported(_)) => Vec::new(),
        Err(e) => return Err(e),
        Ok(results) => statements
            .iter()
            .zip(results)
            .filter(|(_, sent)| *sent == Sent::Signalled)
            .map(|(l, _)| l.clone())
            .collect(),
    };
    outcome
        .cancelled
        .extend(cancelled.iter().map(|l| l.session.clone()));
    if !cancelled.is_empty() {
        statements_left(
            engine,
            &cancelled,
            request.verify_timeout.min(CANCEL_SETTLE),
        )
        .await?;
    }
    // What is left is ended whatever the cancel did to it (an aborted transaction no longer
    // shows as one): only those gone since are not.
    let left = statements.into_iter().chain(in_transaction).collect();
    let left = still_here(engine, outcome, left).await?;
    terminate(engine, request, outcome, left).await
}

/// The sessions of `waiting` still connected; those gone are filed as such.
async fn still_here(
    engine: &dyn Engine,
    outcome: &mut TerminateOutcome,
    waiting: Vec<Listed>,
) -> Result<Vec<Listed>, EngineError> {
    let now = engine.list(&Selector::default(), false).await?;
    let (here, gone): (Vec<Listed>, Vec<Listed>) = waiting
        .into_iter()
        .partition(|w| now.iter().any(|n| same_session(&n.session, &w.session)));
    outcome.skipped.extend(gone.into_iter().map(|l| Skipped {
        session: l.session,
        reason: SkipReason::AlreadyGone,
    }));
    Ok(here)
}

/// The sessions of `waiting` as they are now; those gone, no longer selected or now
/// guarded (rolling back) are filed in `outcome` and dropped.
async fn refresh(
    engine: &dyn Engine,
    request: &SelectRequest,
    outcome: &mut TerminateOutcome,
    waiting: Vec<Listed>,
) -> Result<Vec<Listed>, EngineError> {
    let now = engine.list(&request.selector, false).await?;
    let mut still = Vec::new();
    for w in waiting {
        match now.iter().find(|n| same_session(&n.session, &w.session)) {
            None => outcome.skipped.push(Skipped {
                session: w.session,
                reason: SkipReason::AlreadyGone,
            }),
            Some(n) => match spared(n, request) {
                Some(reason) => outcome.skipped.push(Skipped {
                    session: w.session,
                    reason,
                }),
                None => still.push(n.clone()),
            },
        }
    }
    Ok(still)
}

/// Of `sessions`, those still connected when `timeout` runs out.
async fn sessions_left(
    engine: &dyn Engine,
    sessions: &[Session],
    timeout: Duration,
) -> Result<Vec<Session>, EngineError> {
    let mut poll = Poll::new(timeout);
    let mut left = sessions.to_vec();
    loop {
        let now = engine.list(&Selector::default(), false).await?;
        left.retain(|s| now.iter().any(|n| same_session(&n.session, s)));
        if left.is_empty() || !poll.wait().await {
            return Ok(left);
        }
    }
}

/// Of `cancelled`, those still running the statement that was cancelled when `timeout`
/// runs out. A session that finished it, or runs another one since, is done.
async fn statements_left(
    engine: &dyn Engine,
    cancelled: &[Listed],
    timeout: Duration,
) -> Result<Vec<Listed>, EngineError> {
    let mut poll = Poll::new(timeout);
    let mut left = cancelled.to_vec();
    loop {
        let now = engine.list(&Selector::default(), false).await?;
        left.retain(|c| {
            now.iter()
                .any(|n| same_session(&n.session, &c.session) && running(n) && same_statement(n, c))
        });
        if left.is_empty() || !poll.wait().await {
            return Ok(left);
        }
    }
}

/// Whether two listings of one session show the same statement: by the engine's statement
/// id where it has one, else by when it started (MySQL derives that from whole seconds in
/// the state, so within a second).
fn same_statement(now: &Listed, before: &Listed) -> bool {
    match (now.impact.statement_id, before.impact.statement_id) {
        (Some(a), Some(b)) => a == b,
        _ => match (now.impact.query_start, before.impact.query_start) {
            (Some(a), Some(b)) => (a - b).num_milliseconds().abs() < 1500,
            _ => true,
        },
    }
}

#[cfg(test)]
mod tests;
