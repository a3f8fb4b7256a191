//! Works the queue: claims due steps, runs them, records their outcome or schedules a retry,
//! keeps its leases alive, and notices when a failing target answers again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::fairness::Fairness;
use super::{Lease, Queue, QueueError};
use crate::context::Context;
use crate::pipeline::{self, ActionReport};
use crate::terminate::classify::ErrorClass;
use crate::terminate::{EngineError, Session, SkipReason, same_session};

/// How often a target with steps waiting for a retry is checked: a target that comes back is
/// worked within about this long, whatever the backoff has grown to.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Runs the queue until `stop` is cancelled; then stops claiming, lets running steps finish
/// within `drain`, and hands back whatever is left for another replica (or the next start).
pub async fn run(ctx: Arc<Context>, stop: CancellationToken, drain: Duration) {
    let queue = &ctx.queue;
    let slots = Arc::new(Semaphore::new(queue.config().concurrency));
    let fairness = Arc::new(Fairness::new(
        ctx.targets.iter().map(|(id, _)| id),
        queue.config().per_target_limit(),
    ));
    let mut running = JoinSet::new();
    // Leases are renewed until the very end, drain included.
    let keep = CancellationToken::new();
    let keeper = tokio::spawn(keep_leases(ctx.clone(), keep.clone()));
    let prober = tokio::spawn(probe_targets(ctx.clone(), fairness.clone(), stop.clone()));
    loop {
        while running.try_join_next().is_some() {}
        let free = slots.available_permits();
        let mut claimed = 0;
        let allowances = fairness.allowances();
        if free > 0 && !allowances.is_empty() {
            match queue.claim_fair(free, &allowances).await {
                Ok(leases) => {
                    claimed = leases.len();
                    for lease in leases {
                        // Only this loop takes slots, so the `free` counted above are there.
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        start(&mut running, &ctx, &fairness, lease, Some(slot));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim queued work; retrying"),
            }
        }
        let saturated = free == 0 || claimed == free;
        if saturated {
            // Every shared slot is busy, possibly with steps of targets that stalled just as
            // they started and hold their slots until the termination timeout. A target with
            // nothing running still starts its first due step now, on a slot of its own: so
            // in-flight steps stay within `concurrency` plus one per target, and no target
            // waits behind another's.
            let idle = fairness.idle_allowances();
            if !idle.is_empty() {
                match queue.claim_fair(idle.len(), &idle).await {
                    Ok(leases) => {
                        for lease in leases {
                            start(&mut running, &ctx, &fairness, lease, None);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot claim queued work; retrying"),
                }
            }
        }
        if claimed > 0 && claimed == free {
            // There may be more due work than slots; keep going once a slot frees.
            tokio::select! {
                () = stop.cancelled() => break,
                () = queue.woken() => continue,
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = queue.woken() => {}
            () = tokio::time::sleep(queue.config().poll_interval) => {}
        }
    }
    prober.abort();
    if tokio::time::timeout(drain, async {
        while running.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            running = running.len(),
            "steps still running at shutdown; handing them back"
        );
        // Stopped mid-way, like a crash: the journal covers what they had signalled.
        running.shutdown().await;
    }
    keep.cancel();
    let _ = keeper.await;
    match queue.release_all().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(steps = n, "handed back unfinished steps"),
        Err(e) => tracing::warn!(error = %e, "could not hand back steps; their leases will expire"),
    }
}

/// Runs `lease` on the worker's `running` set, counted for its target; `slot`, a shared
/// worker slot, is held until it ends (`None`: the target's own first step).
fn start(
    running: &mut JoinSet<()>,
    ctx: &Arc<Context>,
    fairness: &Arc<Fairness>,
    lease: Lease,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    fairness.started(&lease.target);
    let ctx = ctx.clone();
    let fairness = fairness.clone();
    running.spawn(async move {
        let target = lease.target.clone();
        let failure = run_lease(&ctx, lease).await;
        fairness.ended(&target, failure);
        drop(slot);
        // A slot is free, or the target may take more: look for work at once.
        ctx.queue.wake();
    });
}

/// Runs `action_id`'s due steps in this process until the action finishes or `budget`
/// passes; steps another process holds are waited for. `None` if it is still running.
pub async fn drive(
    ctx: &Context,
    action_id: Uuid,
    budget: Duration,
) -> Result<Option<ActionReport>, QueueError> {
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        let leases = ctx.queue.claim(usize::MAX >> 1, Some(action_id)).await?;
        if leases.is_empty() {
            if let Some(report) = ctx.queue.report(action_id).await? {
                return Ok(Some(report));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(ctx.queue.config().poll_interval).await;
            continue;
        }
        // A step here is bounded by the termination timeouts; renew leases meanwhile.
        let steps = futures_util::future::join_all(leases.into_iter().map(|l| run_lease(ctx, l)));
        tokio::select! {
            _ = steps => {}
            () = renew_leases(&ctx.queue) => {}
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
    let (mut report, failure) =
        pipeline::run_step(ctx, &lease.plan, step, &lease.work, Some(journal)).await;
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
fn recovered(lease: &Lease, report: &mut pipeline::TargetReport) {
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

/// Renews this process's leases every third of their length, for as long as it is polled.
async fn renew_leases(queue: &Queue) {
    let every = queue.config().lease / 3;
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = queue.renew().await {
            tracing::warn!(error = %e, "cannot renew leases");
        }
    }
}

/// [`renew_leases`] until `stop` is cancelled.
async fn keep_leases(ctx: Arc<Context>, stop: CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = renew_leases(&ctx.queue) => {}
    }
}

/// Probes targets outside the worker slots: every target once at start, then every
/// [`PROBE_EVERY`] those with pending steps that are not known to answer or that wait for a
/// retry. A target that answers has its waiting steps (those whose failure may pass) made
/// due at once, and is no longer parked; one that does not has the steps whose deadline
/// passed given up. Each probe is a task of its own with the target's `connect_timeout`, and
/// a target has at most one at a time, so a stalled target delays no other's probe.
async fn probe_targets(ctx: Arc<Context>, fairness: Arc<Fairness>, stop: CancellationToken) {
    let mut probes = JoinSet::new();
    for target in fairness.probe_all() {
        probes.spawn(probe(ctx.clone(), fairness.clone(), target));
    }
    let mut every = tokio::time::interval(PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        while probes.try_join_next().is_some() {}
        let waiting = match ctx.queue.waiting_targets().await {
            Ok(targets) => targets,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list waiting targets");
                continue;
            }
        };
        for target in fairness.to_probe(&waiting) {
            probes.spawn(probe(ctx.clone(), fairness.clone(), target));
        }
        for (target, _) in &waiting {
            if ctx.targets.get(target).is_none() {
                finish_unconfigured(&ctx, target).await;
            }
        }
    }
}

/// Finishes, as failed, the steps of a target no longer in the config (it was removed
/// while they were queued): nothing can run them, and they would otherwise never be claimed.
async fn finish_unconfigured(ctx: &Context, target: &str) {
    const ALL: usize = 1024;
    match ctx.queue.claim_fair(ALL, &[(target.to_owned(), ALL)]).await {
        // Each attempt fails at once with "not configured" and is finished, not retried.
        Ok(leases) => {
            for lease in leases {
                run_lease(ctx, lease).await;
            }
        }
        Err(e) => tracing::warn!(target_id = %target, error = %e, "cannot claim steps"),
    }
}

/// Probes one target (`SELECT 1`) within its `connect_timeout` and acts on the answer; a
/// target that does not answer has the steps waiting for it say so in their status.
async fn probe(ctx: Arc<Context>, fairness: Arc<Fairness>, target: String) {
    let limit = ctx
        .config
        .targets
        .get(&target)
        .map_or(PROBE_EVERY, |t| t.connect_timeout);
    let answer = match ctx.targets.get(&target) {
        Some(engine) => match tokio::time::timeout(limit, engine.check()).await {
            Ok(answer) => answer,
            Err(_) => Err(EngineError::Timeout(limit)),
        },
        None => Err(EngineError::Config(format!(
            "target {target:?} is not configured"
        ))),
    };
    let unparked = fairness.probed(&target, answer.is_ok());
    match answer {
        Ok(()) => {
            match ctx.queue.target_back(&target).await {
                Ok(n) if n > 0 => {
                    tracing::info!(target_id = %target, steps = n, "target is back; retrying now");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot reschedule steps"),
            }
            if unparked {
                ctx.queue.wake();
            }
        }
        Err(e) => {
            tracing::debug!(target_id = %target, error = %e, "target does not answer its probe");
            let why = format!("target does not answer: {e}");
            if let Err(e) = ctx.queue.mark_unanswered(&target, &why).await {
                tracing::debug!(target_id = %target, error = %e, "cannot note a failed probe");
            }
            give_up_expired(&ctx, &target, &e).await;
        }
    }
}

/// Gives up the steps on `target` whose deadline passed while it did not answer, without
/// another attempt: a parked target's steps are not claimed, so they end here.
async fn give_up_expired(ctx: &Context, target: &str, error: &EngineError) {
    let leases = match ctx.queue.claim_expired(target).await {
        Ok(leases) => leases,
        Err(e) => {
            tracing::warn!(target_id = %target, error = %e, "cannot claim expired steps");
            return;
        }
    };
    for lease in leases {
        let Some(step) = lease.plan.steps.iter().find(|s| s.target == lease.target) else {
            continue;
        };
        let report = pipeline::TargetReport {
            target: lease.target.clone(),
            logins: step.logins.clone(),
            found: 0,
            error: Some(format!("target does not answer: {error}")),
            outcome: Default::default(),
        };
        if let Err(e) = ctx
            .queue
            .retry(&ctx.audit, &lease, report, ErrorClass::Unreachable)
            .await
        {
            tracing::error!(action_id = %lease.action_id, target_id = %lease.target,
                error = %e, "cannot give up a step; it will be given up again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{TargetReport, Work};
    use crate::resolve::{Origin, Plan, Step};
    use crate::terminate::{Scope, Skipped, TerminateOutcome};

    fn session(pid: i64) -> Session {
        Session {
            pid,
            login: Some("app".into()),
            login_id: Some("16384".into()),
            database: None,
            application_name: None,
            client_addr: None,
            backend_start: Some(chrono::Utc::now()),
            state: None,
        }
    }

    fn lease(journal: Vec<Session>) -> Lease {
        let plan = Plan {
            action_id: Uuid::now_v7(),
            origin: Origin::Revocation {
                login: "app".into(),
            },
            scope: Some(Scope::All),
            dry_run: false,
            reason: None,
            cutoff_defaulted: false,
            steps: vec![Step {
                target: "a".into(),
                logins: vec!["app".into()],
                protected: Default::default(),
            }],
        };
        Lease {
            action_id: plan.action_id,
            target: "a".into(),
            attempts: 2,
            journal,
            plan,
            work: Work::Terminate(Scope::All),
            actor: "tester".into(),
            deadline: chrono::Utc::now(),
        }
    }

    #[test]
    fn journaled_sessions_gone_now_are_counted_terminated_whether_listed_again_or_not() {
        let (listed, unlisted, own) = (session(1), session(2), session(3));
        let stranger = session(4);
        let gone = |s: &Session| Skipped {
            session: s.clone(),
            reason: SkipReason::AlreadyGone,
        };
        // This attempt listed 1 (then found it gone when signalling), never saw 2, ended 3
        // itself, and found 4 gone, which the earlier attempt never journaled.
        let mut report = TargetReport {
            target: "a".into(),
            logins: vec!["app".into()],
            found: 0,
            error: None,
            outcome: TerminateOutcome {
                matched: vec![listed.clone(), own.clone(), stranger.clone()],
                terminated: vec![own.clone()],
                skipped: vec![gone(&listed), gone(&stranger)],
                ..TerminateOutcome::default()
            },
        };
        recovered(&lease(vec![listed, unlisted, own]), &mut report);
        let pids = |v: &[Session]| {
            let mut p: Vec<i64> = v.iter().map(|s| s.pid).collect();
            p.sort();
            p
        };
        let o = &report.outcome;
        assert_eq!(pids(&o.terminated), [1, 2, 3]);
        assert_eq!(pids(&o.matched), [1, 2, 3, 4]);
        assert_eq!(o.skipped.len(), 1);
        assert_eq!(
            o.skipped[0].session.pid, 4,
            "not journaled: it went by itself"
        );
        assert_eq!(report.found, 5);
        assert!(o.notes[0].starts_with("2 session(s)"), "{:?}", o.notes);
    }
}
