//! The sweeper: on every target with a `[targets.<id>.sweep]` table, periodically terminates
//! the sessions of dropped logins and of expired logins matching the sweep pattern (Vault's
//! dynamic roles outlive neither their revocation nor their `VALID UNTIL` on their own).
//!
//! A door beside the intake: each sweep is an action carried out by [`crate::runner::sweep`].

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::action::Status;
use crate::context::Context;
use crate::runner;

/// The actor the sweeper's audit records name.
pub const ACTOR: &str = "sweeper";

/// Sweeps every target that has a sweep configured, each on its own interval (the first
/// sweep one interval after start-up), until `stop` is cancelled. A failed sweep is logged
/// and the next one runs on schedule. A sweep under way when `stop` is cancelled is finished
/// first (it is bounded by the termination timeouts), so its audit records are complete.
///
/// Between sweeps, each such target's roles are learned every `learn_interval`: a dynamic
/// login created and dropped between two sweeps is then still known when the next sweep
/// finds its orphaned sessions, so they are ended and audited under its name.
pub async fn run_sweeper(ctx: Arc<Context>, stop: CancellationToken) {
    let loops = ctx.config.targets.iter().filter_map(|(target, config)| {
        let sweep = config.sweep.as_ref()?;
        Some(futures_util::future::join(
            sweep_loop(&ctx, target, sweep.interval, &stop),
            learn_loop(&ctx, target, sweep.learn_interval, &stop),
        ))
    });
    futures_util::future::join_all(loops).await;
}

/// Learns `target`'s roles every `every` until `stop`. Beside the sweeps rather than between
/// them, so a long sweep does not widen the window in which a role can come and go unseen.
/// Learning writes to the store only what is new, so a quiet target costs one query a tick.
async fn learn_loop(ctx: &Context, target: &str, every: Duration, stop: &CancellationToken) {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A target that is down would fail every tick: say so once, and once when it recovers.
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match ctx.learn_sweep_roles(target).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(
                    target_id = target,
                    "learning the sweep's logins works again"
                );
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(
                    target_id = target, error = %e,
                    "could not learn the sweep's logins; a dynamic login dropped meanwhile \
                     may have its sessions spared as login_unknown"
                );
            }
            Err(e) => tracing::debug!(target_id = target, error = %e, "learning still fails"),
        }
    }
}

async fn sweep_loop(ctx: &Context, target: &str, interval: Duration, stop: &CancellationToken) {
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    // A sweep that overran its interval is followed by one a full interval later, not a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match runner::sweep(ctx, target, false, ACTOR).await {
            Ok(report) => {
                let terminated: usize = report
                    .targets
                    .iter()
                    .map(|t| t.outcome.terminated.len())
                    .sum();
                match report.status {
                    Status::Completed if terminated == 0 => tracing::debug!(
                        target_id = target, action_id = %report.action_id, "sweep found nothing"
                    ),
                    Status::Completed => tracing::info!(
                        target_id = target, action_id = %report.action_id, terminated,
                        "sweep terminated sessions of dropped or expired logins"
                    ),
                    Status::Incomplete => tracing::warn!(
                        target_id = target, action_id = %report.action_id, terminated,
                        errors = ?report.targets.iter().filter_map(|t| t.error.as_deref()).collect::<Vec<_>>(),
                        "sweep incomplete"
                    ),
                }
            }
            Err(e) => tracing::error!(target_id = target, error = %e, "sweep failed"),
        }
    }
}
