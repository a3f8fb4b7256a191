//! Carries actions out: claims a due step from the queue, runs it on its target, and records
//! its outcome or schedules its retry, read top to bottom below. [`worker`] is the server's
//! loop over the whole queue (with its probes and leases); [`execute`] and [`sweep`] submit
//! one action and [`drive`] it here, for callers that need the report (the CLI, the sweeper).
//!
//! May call `context` and everything below it (`resolve`, `queue`, `action`, `terminate`,
//! `audit`); nothing below calls back up here.

pub mod schedule;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::action::{ActionReport, Plan, Step, TargetReport, Work};
use crate::audit::AuditError;
use crate::context::Context;
use crate::queue::{Lease, QueueError, Submission};
use crate::resolve::{self, sweep::SweepError};
use crate::select::Mode;
use crate::terminate::classify::ErrorClass;
use crate::terminate::selected::{self, SelectRequest};
use crate::terminate::{
    EngineError, Journal, Session, SkipReason, SweepRequest, TerminateOutcome, TerminateRequest,
    same_session,
};

pub use worker::run;

/// An action that could not be carried out or recorded.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The audit trail refused a record; for the plan record, nothing was executed.
    #[error("audit trail unavailable: {0}")]
    Audit(#[from] AuditError),
    /// The target cannot be swept: it is unknown, or has no sweep configured.
    #[error(transparent)]
    Sweep(#[from] SweepError),
    /// The work queue refused the action or could not be read.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The action is stored and still running (a target is being retried); a running sever
    /// finishes it.
    #[error("action {0} is queued and still running (GET /v1/actions/{0} shows its progress)")]
    StillRunning(Uuid),
}

/// Submits `plan` to the queue and carries it out here, waiting for the report. Nothing is
/// executed unless the plan is stored and audited first, so the trail never misses an action
/// that happened.
pub async fn execute(ctx: &Context, plan: Plan, actor: &str) -> Result<ActionReport, RunError> {
    carry_out(ctx, plan, actor, None).await
}

/// Sweeps `target` for sessions of dropped logins and of expired logins matching its sweep
/// pattern: audited like any action (origin `sweep`), each session record saying why
/// (`sweep_reason`). Only targets with a sweep configured can be swept.
pub async fn sweep(
    ctx: &Context,
    target: &str,
    dry_run: bool,
    actor: &str,
) -> Result<ActionReport, RunError> {
    let plan = resolve::sweep::plan(&ctx.config, target, dry_run)?;
    // The next sweep is the retry: a sweep of a down target is not retried past it.
    let retry_for = resolve::sweep::config(&ctx.config, target)?.interval;
    carry_out(ctx, plan, actor, Some(retry_for)).await
}

/// Submits `plan` and drives its steps in this process until it finishes (steps another
/// process holds are waited for), for callers that need the report: the CLI, sweeps.
async fn carry_out(
    ctx: &Context,
    plan: Plan,
    actor: &str,
    retry_for: Option<Duration>,
) -> Result<ActionReport, RunError> {
    let action_id = plan.action_id;
    let submission = Submission {
        retry_for,
        ..Submission::new(plan, actor.to_owned())
    };
    ctx.queue.submit(&ctx.audit, &submission).await?;
    let termination = &ctx.config.termination;
    let budget = 2 * (termination.timeout + termination.verify_timeout);
    match drive(ctx, action_id, budget).await? {
        Some(report) => Ok(report),
        None => Err(RunError::StillRunning(action_id)),
    }
}

/// Runs `action_id`'s due steps in this process until the action finishes or `budget`
/// passes; steps another process holds are waited for. `None` if it is still running.
pub async fn drive(
    ctx: &Context,
    action_id: Uuid,
    budget: Duration,
) -> Result<Option<ActionReport>, QueueError> {
    let deadline = tokio::time::Instant::now() + budget;
    // Whether the last wait ended by reading the report, just before this claim.
    let mut just_read = false;
    loop {
        let leases = ctx.queue.claim(usize::MAX >> 1, Some(action_id)).await?;
        if leases.is_empty() {
            if !just_read && let Some(report) = ctx.queue.report(action_id).await? {
                return Ok(Some(report));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Held by another worker. This process's own (which starts the steps it accepted)
            // announces the finish at once; another's is seen by the next poll, and a step
            // handed back by the next claim.
            let poll = ctx.queue.config().poll_interval.min(left);
            if let Some(report) = ctx.queue.wait(action_id, poll).await? {
                return Ok(Some(report));
            }
            just_read = true;
            continue;
        }
        just_read = false;
        // A step here is bounded by the termination timeouts; renew leases meanwhile.
        let steps = futures_util::future::join_all(leases.into_iter().map(|l| run_lease(ctx, l)));
        tokio::select! {
            _ = steps => {}
            () = worker::renew_leases(&ctx.queue) => {}
        }
    }
}

/// Runs one leased step and records its outcome, or schedules its retry; returns the class
/// of its failure, if it failed.
async fn run_lease(ctx: &Context, lease: Lease) -> Option<ErrorClass> {
    let Some(step) = lease.plan.steps.iter().find(|s| s.target == lease.target) else {
        tracing::error!(action_id = %lease.action_id, target_id = %lease.target,
            "a queued step is not in its plan");
        return None;
    };
    let journal = ctx.queue.journal(&lease);
    let (mut report, failure) = run_step(
        ctx,
        &lease.plan,
        &lease.actor,
        step,
        &lease.work,
        Some(journal),
        lease.roles.clone(),
    )
    .await;
    let result = match failure {
        Some(class) if report.error.is_some() => {
            ctx.queue.retry(&ctx.audit, &lease, report, class).await
        }
        _ => {
            recovered(&lease, &mut report);
            ctx.queue.finish(&ctx.audit, &lease, &report).await
        }
    };
    match result {
        Ok(true) => {}
        Ok(false) => tracing::warn!(action_id = %lease.action_id, target_id = %lease.target,
            "lost the step's lease before recording it; its new holder records it"),
        // The lease expires and the step runs again; its journal keeps what was signalled.
        Err(e) => tracing::error!(action_id = %lease.action_id, target_id = %lease.target,
            error = %e, "cannot record a finished step; it will run again"),
    }
    failure
}

/// Adds to `report` the sessions an interrupted earlier attempt recorded and signalled that
/// are gone now: they were terminated, but their records were never written. That includes
/// those this attempt still listed but found gone when it signalled: the earlier attempt
/// may still have been running (its lease lapsed while the store was down), and its signal
/// is what ended them, not the sessions themselves.
fn recovered(lease: &Lease, report: &mut TargetReport) {
    if lease.journal.is_empty() || lease.plan.dry_run {
        return;
    }
    let journaled = |s: &Session| lease.journal.iter().any(|j| same_session(j, s));
    let o = &mut report.outcome;
    let (ended, skipped): (Vec<_>, Vec<_>) = std::mem::take(&mut o.skipped)
        .into_iter()
        .partition(|s| s.reason == SkipReason::AlreadyGone && journaled(&s.session));
    o.skipped = skipped;
    let mut gone: Vec<Session> = ended.into_iter().map(|s| s.session).collect();
    let seen = |s: &Session| {
        o.matched.iter().any(|m| same_session(m, s))
            || o.terminated.iter().any(|m| same_session(m, s))
            || o.skipped.iter().any(|m| same_session(&m.session, s))
            || o.failed.iter().any(|m| same_session(&m.session, s))
            || o.remaining.iter().any(|m| same_session(m, s))
    };
    let unseen: Vec<Session> = lease
        .journal
        .iter()
        .filter(|s| !seen(s) && !gone.iter().any(|g| same_session(g, s)))
        .cloned()
        .collect();
    if gone.is_empty() && unseen.is_empty() {
        return;
    }
    o.notes.push(format!(
        "{} session(s) were signalled by an interrupted earlier attempt and are gone",
        gone.len() + unseen.len()
    ));
    // Those already listed are in `matched`; the unseen ones join it.
    o.matched.extend(unseen.iter().cloned());
    gone.extend(unseen);
    o.terminated.extend(gone);
    report.found = o.matched.len() + o.skipped.len();
}

/// Runs one step on its target, within the termination timeouts. A failure comes with its
/// class, which says how (and whether) it is retried: a target that does not answer within
/// the timeouts is [`ErrorClass::Unreachable`].
async fn run_step(
    ctx: &Context,
    plan: &Plan,
    actor: &str,
    step: &Step,
    work: &Work,
    journal: Option<Arc<dyn Journal>>,
    roles: Option<Arc<crate::store::StoredRoles>>,
) -> (TargetReport, Option<ErrorClass>) {
    let termination = &ctx.config.termination;
    // A graceful step waits its grace before it signals; the rest is as for any step.
    let limit = termination.timeout + termination.verify_timeout + plan.ending.grace();
    let missing = schedule::may_not_act(ctx, plan).await;
    let result = match ctx.targets.get(&step.target) {
        // A scheduled action acts only inside its window, and only once its announcement
        // was delivered if it required that.
        _ if missing.is_some() => Err((missing.unwrap_or_default(), ErrorClass::Fatal)),
        // Resolution only plans configured targets; this guards a config/target mismatch.
        None => Err((
            format!("target {:?} is not configured", step.target),
            ErrorClass::Fatal,
        )),
        Some(engine) => {
            let call = async {
                match work {
                    Work::Select(selection) => {
                        let request = SelectRequest {
                            selector: selection.selector.clone(),
                            all_logins: selection.all_logins,
                            ending: plan.ending,
                            protected: step.protected.clone(),
                            dry_run: plan.dry_run,
                            verify_timeout: termination.verify_timeout,
                            at_most: selection.at_most.get(&step.target).copied(),
                            journal,
                            pick: selection.pick,
                        };
                        selected::end_selected(engine.as_ref(), &request).await
                    }
                    Work::Terminate(scope) => {
                        // A credential's graceful rotation: its sessions finish what they are
                        // doing within the grace, then the rotation path ends them all, as it
                        // would have at once (it alone finds a dropped role's sessions).
                        let mut outcome = if plan.ending.mode == Mode::Graceful && !plan.dry_run {
                            selected::let_finish(
                                engine.as_ref(),
                                &step.logins,
                                *scope,
                                plan.ending.grace(),
                                &step.protected,
                            )
                            .await?
                        } else {
                            TerminateOutcome::default()
                        };
                        let request = TerminateRequest {
                            logins: step.logins.clone(),
                            scope: *scope,
                            protected: step.protected.clone(),
                            dry_run: plan.dry_run,
                            verify_timeout: termination.verify_timeout,
                            refine_cutoff: plan.cutoff_defaulted,
                            journal,
                            roles,
                        };
                        outcome.absorb(engine.terminate(&request).await?);
                        Ok(outcome)
                    }
                    Work::Lock {
                        login,
                        until,
                        terminate,
                    } => {
                        let lock = locks::LockStep {
                            plan,
                            actor,
                            target: &step.target,
                            login,
                            until: *until,
                            terminate: *terminate,
                            protected: &step.protected,
                            journal,
                        };
                        locks::lock(ctx, engine.as_ref(), lock).await
                    }
                    Work::Unlock {
                        lock_id,
                        login,
                        ended_by,
                    } => {
                        locks::unlock(
                            ctx,
                            engine.as_ref(),
                            *lock_id,
                            &step.target,
                            login,
                            ended_by,
                        )
                        .await
                    }
                    Work::Drain {
                        database,
                        until,
                        spare,
                        lock_accounts,
                    } => {
                        let drain = drains::DrainStep {
                            plan,
                            actor,
                            target: &step.target,
                            database,
                            until: *until,
                            spare,
                            lock_accounts: *lock_accounts,
                            protected: &step.protected,
                            journal,
                        };
                        drains::drain(ctx, engine.as_ref(), drain).await
                    }
                    Work::Undrain {
                        drain_id,
                        database,
                        ended_by,
                    } => {
                        let target = &step.target;
                        drains::undrain(ctx, engine.as_ref(), *drain_id, target, database, ended_by)
                            .await
                    }
                    Work::Sweep { pattern } => {
                        let request = SweepRequest {
                            pattern: pattern.clone(),
                            protected: step.protected.clone(),
                            dry_run: plan.dry_run,
                            verify_timeout: termination.verify_timeout,
                            journal,
                        };
                        engine.sweep(&request).await
                    }
                }
            };
            match tokio::time::timeout(limit, call).await {
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(e)) => Err((e.to_string(), e.class())),
                Err(_) => Err((
                    EngineError::Timeout(limit).to_string(),
                    ErrorClass::Unreachable,
                )),
            }
        }
    };
    let (outcome, error, class) = match result {
        Ok(outcome) => (outcome, None, None),
        Err((e, class)) => {
            tracing::warn!(target_id = %step.target, error = %e, ?class, "target failed");
            (TerminateOutcome::default(), Some(e), Some(class))
        }
    };
    let report = TargetReport {
        target: step.target.clone(),
        logins: step.logins.clone(),
        found: outcome.matched.len() + outcome.skipped.len(),
        error,
        outcome,
        decisions: Vec::new(),
    };
    (report, class)
}

mod drain_accounts;
mod drains;
mod locks;

#[cfg(test)]
mod tests;
