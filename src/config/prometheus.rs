//! `[metrics]`: who may scrape `GET /metrics` on the operator listener, and how often the
//! collector behind the per-target gauges looks. Uses `config`'s own types (and the token
//! hash check of `operators`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use super::operators::{OperatorConfig, token_hash};
use super::{ConfigError, invalid};

/// Scraping and collecting metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Hex SHA-256 of each bearer token accepted at `GET /metrics` on the operator listener
    /// (`sever operator-token` makes one). Operator tokens are not accepted there. Unused
    /// when `server.metrics_listen` is set: that listener asks for no token.
    pub tokens_sha256: Vec<String>,
    /// How often every target's sessions are listed for `sever_sessions` (and target up,
    /// latency) and the queue is read for its depth, from the first scrape on.
    #[serde(with = "humantime_serde")]
    pub sessions_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            tokens_sha256: Vec::new(),
            sessions_interval: Duration::from_secs(15),
        }
    }
}

impl MetricsConfig {
    /// Checks the token hashes (well-formed, unique, none an operator's) and the interval.
    pub(super) fn validate(&self, operators: &[OperatorConfig]) -> Result<(), ConfigError> {
        let operator_hashes: BTreeSet<String> = operators
            .iter()
            .map(|op| op.token_sha256.to_ascii_lowercase())
            .collect();
        let mut seen = BTreeSet::new();
        for (i, hash) in self.tokens_sha256.iter().enumerate() {
            let path = format!("metrics.tokens_sha256[{i}]");
            let hash = token_hash(&path, hash)?;
            if operator_hashes.contains(&hash) {
                return Err(invalid(
                    path,
                    "is an operator's token: give scrapers a token of their own",
                ));
            }
            if !seen.insert(hash) {
                return Err(invalid(path, "the same token is configured twice"));
            }
        }
        if self.sessions_interval.is_zero() {
            return Err(invalid(
                "metrics.sessions_interval".into(),
                "must be positive",
            ));
        }
        Ok(())
    }
}
