//! The gauges that take a query, collected on a tick (`metrics.sessions_interval`) rather
//! than at each scrape, so a scraper never makes sever query its targets or its store: every
//! target's current sessions by login (`sever_sessions`), whether it answered and how fast
//! (`sever_target_up`, its listing latency), and the queue's depth. A scrape renders what
//! the last tick set; the ticks start with the first scrape, so a sever nobody scrapes
//! lists no target for metrics.
//!
//! Calls `context` (targets, queue, config), `select` (the empty selector) and `telemetry`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::context::Context;
use crate::select::Selector;
use crate::telemetry;
use crate::terminate::listing::Listed;
use crate::terminate::{Engine, EngineError, SkipReason};

/// Collects every `metrics.sessions_interval` once `scraped` is cancelled (by the first
/// scrape let in: until someone reads `/metrics`, no target is queried for it), the first
/// time at once; runs `upkeep` (the exporter's housekeeping, which bounds what histograms
/// hold between scrapes) on every tick regardless. Ends when `stop` is cancelled.
pub async fn run(
    ctx: Arc<Context>,
    upkeep: impl Fn() + Send,
    scraped: CancellationToken,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(ctx.config.metrics.sessions_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut collecting = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            () = scraped.cancelled(), if !collecting => {}
        }
        upkeep();
        if !scraped.is_cancelled() {
            continue;
        }
        if !collecting {
            collecting = true;
            tick.reset();
        }
        // A collection under way is dropped at shutdown: it changes nothing.
        tokio::select! {
            () = stop.cancelled() => return,
            () = collect(&ctx) => {}
        }
    }
}

/// One tick: every target listed at once (each within the termination timeout), then the
/// queue read.
pub async fn collect(ctx: &Context) {
    let timeout = ctx.config.termination.timeout;
    let listings = ctx.targets.iter().map(|(target, engine)| async move {
        let probe = probe(engine.as_ref(), timeout).await;
        telemetry::target_listed(target, probe.listed.is_ok(), probe.took);
        match probe.listed {
            Ok(listed) => {
                let logins = client_sessions(&listed).map(|l| l.session.login.as_deref());
                telemetry::sessions(target, &count_by_login(&ctx.config, target, logins));
            }
            // Last counts stay; `sever_target_up` 0 says they are not current.
            Err(e) => tracing::debug!(target_id = %target, error = %e,
                "metrics: cannot list the target's sessions"),
        }
    });
    futures_util::future::join_all(listings).await;
    match ctx.queue.depth().await {
        Ok(depth) => {
            let waited = depth
                .oldest_due
                .and_then(|at| (Utc::now() - at).to_std().ok())
                .unwrap_or(Duration::ZERO);
            telemetry::queue(depth.due, depth.scheduled, waited);
        }
        Err(e) => tracing::debug!(error = %e, "metrics: cannot read the queue's depth"),
    }
}

/// One target asked for its sessions: what it answered and how long it took.
#[derive(Debug)]
pub struct Probe {
    /// Every session it listed (none selected away), or why it could not list them.
    pub listed: Result<Vec<Listed>, EngineError>,
    /// How long the listing took, connection included (`sever_target_list_duration_seconds`).
    pub took: Duration,
}

/// Lists every session on `engine` within `timeout`: whether the target is up and how fast
/// it answers, for metrics and for `GET /v1/targets`.
pub async fn probe(engine: &dyn Engine, timeout: Duration) -> Probe {
    let started = Instant::now();
    let listed = match tokio::time::timeout(timeout, engine.list(&Selector::default(), false)).await
    {
        Ok(listed) => listed,
        Err(_) => Err(EngineError::Timeout(timeout)),
    };
    Probe {
        listed,
        took: started.elapsed(),
    }
}

/// The client sessions among `listed`: not replication or background workers, which are
/// no one's.
pub fn client_sessions(listed: &[Listed]) -> impl Iterator<Item = &Listed> {
    listed
        .iter()
        .filter(|l| l.guard != Some(SkipReason::SystemBackend))
}

/// The logins the config names on `target`: those its credentials map there, and those
/// protected there. Only these become label values; every other login is `other`.
pub fn named_logins(config: &Config, target: &str) -> BTreeSet<String> {
    let mut named = config.protected_on(target);
    named.extend(
        config
            .credentials
            .values()
            .flat_map(|c| &c.logins)
            .filter(|m| m.target == target)
            .map(|m| m.login.clone()),
    );
    named
}

/// Sessions per login label: every named login (0 with no session), and
/// [`telemetry::OTHER_LOGIN`] for the rest, sessions without a known login included.
fn count_by_login<'a>(
    config: &Config,
    target: &str,
    logins: impl Iterator<Item = Option<&'a str>>,
) -> BTreeMap<String, u64> {
    let named = named_logins(config, target);
    let mut counts: BTreeMap<String, u64> = named.iter().map(|l| (l.clone(), 0)).collect();
    counts.insert(telemetry::OTHER_LOGIN.to_owned(), 0);
    for login in logins {
        let label = match login {
            // A configured login literally named `other` is counted apart from the rest.
            Some(l) if named.contains(l) => l,
            _ => telemetry::OTHER_LOGIN,
        };
        *counts.entry(label.to_owned()).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_logins_become_labels_and_the_rest_are_other() {
        let config = Config::parse(
            r#"
            protected_logins = ["postgres"]
            [targets.main]
            engine = "postgres"
            url = { env = "U" }
            protected_logins = ["backup"]
            [targets.side]
            engine = "postgres"
            url = { env = "U" }
            [credentials.orders]
            logins = [{ target = "main", login = "app" }, { target = "side", login = "batch" }]
            "#,
        )
        .unwrap();
        assert_eq!(
            named_logins(&config, "main"),
            ["app", "backup", "postgres"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        let counts = count_by_login(
            &config,
            "main",
            [
                Some("app"),
                Some("app"),
                Some("mallory"),
                None,
                Some("batch"),
            ]
            .into_iter(),
        );
        let expected: BTreeMap<String, u64> =
            [("app", 2), ("backup", 0), ("other", 3), ("postgres", 0)]
                .map(|(l, n)| (l.to_owned(), n))
                .into_iter()
                .collect();
        assert_eq!(counts, expected);
    }
}
