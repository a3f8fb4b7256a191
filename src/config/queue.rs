//! `[queue]`: the durable work queue's concurrency, leases, retries and retention. Uses only
//! `config`'s own types.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// The durable work queue every action runs from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Steps (one action on one target) this process runs at once.
    pub concurrency: usize,
    /// Steps of one target this process runs at once, so a target that stops answering can
    /// hold no more than this many of the `concurrency` slots; unset: a quarter of
    /// `concurrency`, at least 1.
    pub per_target: Option<usize>,
    /// How long a claimed step stays with its process without a renewal; a replica that dies
    /// holding work gives it up after at most this long.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How long a failing target is retried, from when the action was accepted.
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
    /// Longest wait between two retries of a failing target.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How often the queue is checked for work another replica added or a lease freed.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long finished actions stay in the queue (for `GET /v1/actions/{id}`); the audit
    /// trail keeps their records regardless.
    #[serde(with = "humantime_serde")]
    pub keep_finished: Duration,
}

impl QueueConfig {
    /// Steps of one target this process runs at once: `per_target`, or a quarter of
    /// `concurrency` (at least 1), never more than `concurrency`.
    pub fn per_target_limit(&self) -> usize {
        self.per_target
            .unwrap_or(self.concurrency / 4)
            .clamp(1, self.concurrency.max(1))
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            per_target: None,
            lease: Duration::from_secs(15),
            retry_for: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(60),
            poll_interval: Duration::from_millis(250),
            keep_finished: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl QueueConfig {
    /// Checks the concurrency, the lease and the intervals.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return Err(invalid("queue.concurrency".into(), "must be positive"));
        }
        if self.per_target == Some(0) {
            return Err(invalid("queue.per_target".into(), "must be positive"));
        }
        if self.lease < Duration::from_secs(1) {
            // Leases are renewed every third of their length; shorter than a second would
            // spend the store's capacity on renewals.
            return Err(invalid("queue.lease".into(), "must be at least 1s"));
        }
        if self.poll_interval.is_zero() || self.max_backoff.is_zero() {
            return Err(invalid(
                "queue".into(),
                "poll_interval and max_backoff must be positive",
            ));
        }
        Ok(())
    }
}
