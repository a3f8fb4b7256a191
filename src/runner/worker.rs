//! The server's worker: works the whole queue, claiming due steps fairly across targets and
//! running each through [`run_lease`], keeps its leases alive, and probes failing targets to
//! notice when they answer again.
//!
//! Part of the runner: may call `context` and below (`queue`, `action`, `terminate`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::run_lease;
use crate::action::TargetReport;
use crate::context::Context;
use crate::queue::fairness::Fairness;
use crate::queue::{Lease, Queue};
use crate::terminate::EngineError;
use crate::terminate::classify::ErrorClass;

/// How often a target with steps waiting for a retry is checked: a target that comes back is
/// worked within about this long, whatever the backoff has grown to.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How much longer than its `connect_timeout` a probe may take. The engine's own connect
/// gives up at `connect_timeout` with the reason (refused, TLS, auth); a guard of exactly
/// that length raced it and, under load, reported only "timed out".
const PROBE_MARGIN: Duration = Duration::from_millis(500);

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
    queue.read_roles_ahead(
        ctx.config
            .targets
            .iter()
            .filter(|(_, t)| t.engine == crate::config::Engine::Postgres)
            .map(|(id, _)| id.clone()),
    );
    queue.adopt_accepted(true);
    // Rung as a step ends: a slot is free, or its target may take more.
    let ended = Arc::new(Notify::new());
    // The last claim found nothing due while no target was at its cap: a step ending then
    // frees a slot no due step waits for, so it is not worth a store round trip. Anything
    // due since comes with a wake of its own (a submission, a probe that answered, a step
    // handed back) or is found by the next poll.
    let mut nothing_due = false;
    let mut must_claim = true;
    loop {
        while running.try_join_next().is_some() {}
        if start_adopted(&mut running, &ctx, &fairness, &slots, &ended).await {
            nothing_due = false;
        }
        let free = slots.available_permits();
        let mut claimed = 0;
        let allowances = fairness.allowances();
        if must_claim && free > 0 && !allowances.is_empty() {
            let at_cap = fairness.any_at_cap();
            match queue.claim_fair(free, &allowances).await {
                Ok(leases) => {
                    claimed = leases.len();
                    nothing_due = claimed == 0 && !at_cap;
                    for lease in leases {
                        // Only this loop takes slots, so the `free` counted above are there.
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        start(&mut running, &ctx, &fairness, &ended, lease, Some(slot));
                    }
                }
                Err(e) => {
                    nothing_due = false;
                    tracing::warn!(error = %e, "cannot claim queued work; retrying");
                }
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
                            start(&mut running, &ctx, &fairness, &ended, lease, None);
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
                () = queue.woken() => {}
                () = queue.adopted_woken() => {}
                () = ended.notified() => {}
            }
            must_claim = true;
            continue;
        }
        must_claim = tokio::select! {
            () = stop.cancelled() => break,
            () = queue.woken() => true,
            // Started at the top of the loop; whatever else is due has a wake of its own.
            () = queue.adopted_woken() => false,
            () = ended.notified() => !nothing_due,
            () = tokio::time::sleep(queue.config().poll_interval) => true,
        };
    }
    prober.abort();
    // Whatever was adopted meanwhile is leased to this process, so handed back below.
    queue.adopt_accepted(false);
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

/// Starts the steps accepted here and stored leased to this process, as if just claimed:
/// on a shared slot within the target's allowance, or as an idle target's first step on a
/// slot of its own. One that cannot start now is handed back for the next claim (here or
/// on another replica); returns whether any was.
async fn start_adopted(
    running: &mut JoinSet<()>,
    ctx: &Arc<Context>,
    fairness: &Arc<Fairness>,
    slots: &Arc<Semaphore>,
    ended: &Arc<Notify>,
) -> bool {
    let mut handed_back = false;
    for lease in ctx.queue.take_adopted() {
        let allowed = |allowances: Vec<(String, usize)>| {
            allowances.iter().any(|(target, _)| *target == lease.target)
        };
        if allowed(fairness.allowances())
            && let Ok(slot) = slots.clone().try_acquire_owned()
        {
            start(running, ctx, fairness, ended, lease, Some(slot));
        } else if allowed(fairness.idle_allowances()) {
            start(running, ctx, fairness, ended, lease, None);
        } else {
            handed_back = true;
            if let Err(e) = ctx.queue.hand_back(&lease).await {
                // Its lease then expires, and a claim takes it after that.
                tracing::warn!(action_id = %lease.action_id, target = %lease.target,
                    error = %e, "cannot hand back a step accepted here");
            }
        }
    }
    handed_back
}

/// Runs `lease` on the worker's `running` set, counted for its target; `slot`, a shared
/// worker slot, is held until it ends (`None`: the target's own first step).
fn start(
    running: &mut JoinSet<()>,
    ctx: &Arc<Context>,
    fairness: &Arc<Fairness>,
    ended: &Arc<Notify>,
    lease: Lease,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    fairness.started(&lease.target);
    let ctx = ctx.clone();
    let fairness = fairness.clone();
    let ended = ended.clone();
    running.spawn(async move {
        let target = lease.target.clone();
        let failure = run_lease(&ctx, lease).await;
        fairness.ended(&target, failure);
        drop(slot);
        // A slot is free, or the target may take more: look for work at once, if any can
        // be waiting for it.
        ended.notify_one();
    });
}

/// Renews this process's leases every third of their length, for as long as it is polled.
pub(super) async fn renew_leases(queue: &Queue) {
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
        .map_or(PROBE_EVERY, |t| t.connect_timeout + PROBE_MARGIN);
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
        let report = TargetReport {
            target: lease.target.clone(),
            logins: step.logins.clone(),
            found: 0,
            error: Some(format!("target does not answer: {error}")),
            outcome: Default::default(),
            decisions: Vec::new(),
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
