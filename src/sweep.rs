//! The sweeper: on every target with a `[targets.<id>.sweep]` table, periodically terminates
//! the sessions of dropped logins and of expired logins matching the sweep pattern (Vault's
//! dynamic roles outlive neither their revocation nor their `VALID UNTIL` on their own).
//!
//! A door beside the intake: each sweep is a policy (`sweep:<target>`, see
//! [`crate::policy`]), evaluated once across replicas, whose action
//! [`crate::runner::sweep`] carries out.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::context::Context;

/// The actor the sweeper's audit records name.
pub use crate::policy::SWEEP_ACTOR as ACTOR;

/// Sweeps every target that has a sweep configured, each on its own interval (the first
/// sweep one interval after start-up, then on the schedule kept in the store, so replicas
/// sweep once between them), until `stop` is cancelled. A failed sweep is logged and the
/// next one runs on schedule. A sweep under way when `stop` is cancelled is finished
/// first (it is bounded by the termination timeouts), so its audit records are complete.
///
/// Between sweeps, each such target's roles are learned every `learn_interval`: a dynamic
/// login created and dropped between two sweeps is then still known when the next sweep
/// finds its orphaned sessions, so they are ended and audited under its name.
pub async fn run_sweeper(ctx: Arc<Context>, stop: CancellationToken) {
    let learning = ctx.config.targets.iter().filter_map(|(target, config)| {
        let sweep = config.sweep.as_ref()?;
        Some(learn_loop(&ctx, target, sweep.learn_interval, &stop))
    });
    futures_util::future::join(
        crate::policy::run_sweep_policies(&ctx, &stop),
        futures_util::future::join_all(learning),
    )
    .await;
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
