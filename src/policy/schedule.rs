//! Evaluating each policy on its interval, once across replicas: every replica keeps a loop
//! per policy, and the one whose claim moves the stored due moment runs that evaluation.
//! The due moment lives in the store, so a restart keeps the rhythm instead of resetting it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{Policy, Trigger, all, evaluate};
use crate::context::Context;

/// How long a loop waits after the store failed before it tries again.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// Evaluates every `[[policies]]` rule on its interval until `stop` is cancelled. An
/// evaluation under way when `stop` is cancelled finishes first, so its records are whole.
pub async fn run_policies(ctx: Arc<Context>, stop: CancellationToken) {
    let loops = all(&ctx.config)
        .into_iter()
        .filter(|p| matches!(p, Policy::Rule(_)))
        .map(|p| policy_loop(&ctx, p, &stop));
    futures_util::future::join_all(loops).await;
}

/// The same for the sweeps (`[targets.<id>.sweep]`), which the sweeper runs beside its
/// learning loops.
pub async fn run_sweep_policies(ctx: &Context, stop: &CancellationToken) {
    let loops = all(&ctx.config)
        .into_iter()
        .filter(|p| matches!(p, Policy::Sweep { .. }))
        .map(|p| policy_loop(ctx, p, stop));
    futures_util::future::join_all(loops).await;
}

async fn policy_loop(ctx: &Context, policy: Policy<'_>, stop: &CancellationToken) {
    let name = policy.name();
    let interval = policy.interval();
    let every = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
    // The first evaluation one interval after the policy is first seen, as the sweeper
    // always did; a stored due moment (from before a restart, or another replica) wins.
    let mut failing = false;
    loop {
        let due = match ctx.store.schedule_policy(&name, Utc::now() + every).await {
            // A due moment that does not parse (the store was written by hand) waits an
            // interval, then the claim rewrites it.
            Ok(due) => parse(&due).unwrap_or_else(|| Utc::now() + every),
            Err(e) => {
                if !failing {
                    tracing::warn!(policy = %name, error = %e, "cannot read the policy's schedule");
                }
                failing = true;
                if wait(STORE_RETRY, stop).await {
                    return;
                }
                continue;
            }
        };
        // Never sleep longer than an interval: a due moment moved by a replica with a
        // different interval (a config change) is picked up within one.
        let sleep = (due - Utc::now())
            .to_std()
            .unwrap_or_default()
            .min(interval);
        if wait(sleep, stop).await {
            return;
        }
        let now = Utc::now();
        if now < due {
            continue;
        }
        match ctx.store.claim_policy(&name, now, now + every).await {
            Ok(true) => {}
            // Another replica runs this one.
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(policy = %name, error = %e, "cannot claim the policy's evaluation");
                if wait(STORE_RETRY, stop).await {
                    return;
                }
                continue;
            }
        }
        failing = false;
        match evaluate(ctx, policy, &Trigger::schedule()).await {
            Ok(e) if e.ended() > 0 => tracing::info!(policy = %name,
                outcome = e.outcome.as_str(), ended = e.ended(), "policy ended sessions"),
            Ok(e) => tracing::debug!(policy = %name, outcome = e.outcome.as_str(),
                matched = e.matched(), "policy evaluated"),
            Err(e) => tracing::error!(policy = %name, error = %e, "policy evaluation failed"),
        }
    }
}

/// Sleeps `d` unless `stop` comes first; whether it did.
async fn wait(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = stop.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

fn parse(stored: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(stored)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
