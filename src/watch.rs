//! Notices that no action raises, from watching: `target.down` once a target has failed its
//! checks for `notify.target_down_after` (once per outage, across replicas), and
//! `audit.chain_broken` once the checkpoint writer found the trail tampered with. Runs only
//! when a channel takes either.
//!
//! Calls `context` (targets, the audit chain's health, the notifier, the store) and
//! `notify`; the audit layer below knows nothing of notifications, so this is where its
//! finding becomes one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::notify::{Event, Notice};
use crate::store::Claim;
use crate::terminate::EngineError;

/// How much longer than its `connect_timeout` a target's check may take.
const CHECK_MARGIN: Duration = Duration::from_secs(2);
/// The claim that makes one replica, once, tell of the chain (pruned with the other claims,
/// after `webhooks.replay_retention`, so a trail still broken is told again then).
const CHAIN_CLAIM: &str = "notify:audit.chain_broken";

fn down_claim(target: &str) -> String {
    format!("notify:target.down:{target}")
}

/// How often targets are checked: a quarter of `target_down_after`, between 200 ms and 30 s.
fn check_every(after: Duration) -> Duration {
    (after / 4).clamp(Duration::from_millis(200), Duration::from_secs(30))
}

/// Watches until `stop`.
pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let targets_wanted = ctx.notifier.wants(Event::TargetDown);
    let chain_wanted = ctx.notifier.wants(Event::AuditChainBroken);
    if !targets_wanted && !chain_wanted {
        return;
    }
    let after = ctx.config.notify.target_down_after;
    let mut tick = tokio::time::interval(check_every(after));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = Targets::default();
    let mut chain_told = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if chain_wanted
            && !chain_told
            && let Err(what) = ctx.audit_chain.state()
        {
            chain_told = true;
            chain_broken(&ctx, &what).await;
        }
        if targets_wanted {
            tokio::select! {
                () = stop.cancelled() => return,
                () = watch.check(&ctx, after) => {}
            }
        }
    }
}

/// Tells of the tampering, unless another replica (or an earlier run) did.
async fn chain_broken(ctx: &Context, what: &str) {
    match ctx.store.claim(CHAIN_CLAIM, "", Utc::now()).await {
        Ok(Claim::Claimed) => {}
        Ok(Claim::Duplicate { .. }) => return,
        Err(e) => tracing::warn!(error = %e, "cannot claim the audit chain's notice; sending it"),
    }
    let notice = Notice {
        reason: Some(what.to_owned()),
        ..Notice::new(Event::AuditChainBroken)
    };
    if let Err(e) = ctx.notifier.notify(&notice).await {
        tracing::error!(error = %e, "cannot queue audit.chain_broken");
    }
}

/// What this process saw of each target.
#[derive(Default)]
struct Targets {
    /// Since when each failing target has failed, and its last error.
    failing: HashMap<String, (Instant, String)>,
    /// Targets told of in this outage (by this replica or another).
    told: HashSet<String>,
    /// Targets seen answering since start whose claim was cleared.
    cleared: HashSet<String>,
}

impl Targets {
    /// Checks every target at once (each within its `connect_timeout`), and tells of those
    /// down for `after`.
    async fn check(&mut self, ctx: &Context, after: Duration) {
        let checks = ctx.targets.iter().map(|(target, engine)| async move {
            let limit = ctx
                .config
                .targets
                .get(target)
                .map_or(CHECK_MARGIN, |t| t.connect_timeout + CHECK_MARGIN);
            let answer = match tokio::time::timeout(limit, engine.check()).await {
                Ok(answer) => answer,
                Err(_) => Err(EngineError::Timeout(limit)),
            };
            (target.clone(), answer)
        });
        for (target, answer) in futures_util::future::join_all(checks).await {
            match answer {
                Ok(()) => self.answered(ctx, target).await,
                Err(e) => self.failed(ctx, target, e.to_string(), after).await,
            }
        }
    }

    async fn answered(&mut self, ctx: &Context, target: String) {
        self.failing.remove(&target);
        self.told.remove(&target);
        // The outage is over (or was, before this process started): the next one is told.
        if !self.cleared.contains(&target) {
            match ctx.store.release(&down_claim(&target)).await {
                Ok(()) => {
                    self.cleared.insert(target);
                }
                Err(e) => tracing::debug!(target_id = %target, error = %e,
                    "cannot clear the target's down notice"),
            }
        }
    }

    async fn failed(&mut self, ctx: &Context, target: String, error: String, after: Duration) {
        self.cleared.remove(&target);
        let since = self
            .failing
            .entry(target.clone())
            .or_insert_with(|| (Instant::now(), String::new()));
        since.1 = error;
        let (since, error) = (since.0, since.1.clone());
        if since.elapsed() < after || self.told.contains(&target) {
            return;
        }
        self.told.insert(target.clone());
        match ctx.store.claim(&down_claim(&target), "", Utc::now()).await {
            Ok(Claim::Claimed) => {}
            // Another replica told of it, or this one before a restart.
            Ok(Claim::Duplicate { .. }) => return,
            Err(e) => tracing::warn!(target_id = %target, error = %e,
                "cannot claim the target's down notice; sending it"),
        }
        let down_for = since.elapsed().as_secs();
        tracing::warn!(target_id = %target, down_for_seconds = down_for, "target down");
        let notice = Notice {
            targets: vec![target.clone()],
            reason: Some(error),
            counts: [("down_for_seconds".to_owned(), down_for)].into(),
            ..Notice::new(Event::TargetDown)
        };
        if let Err(e) = ctx.notifier.notify(&notice).await {
            tracing::error!(target_id = %target, error = %e, "cannot queue target.down");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_often_enough_and_not_too_often() {
        assert_eq!(
            check_every(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        assert_eq!(
            check_every(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            check_every(Duration::from_millis(100)),
            Duration::from_millis(200)
        );
    }
}
