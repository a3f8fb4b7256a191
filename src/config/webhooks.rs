//! `[webhooks]`: the Standard Webhooks intake's secrets, timestamp tolerance and replay window.
//! Uses only `config`'s own types.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, SecretRef, invalid};

/// Standard Webhooks intake.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Signing secrets (`whsec_…`); any one verifies, so keys can be rotated.
    pub secrets: Vec<SecretRef>,
    /// Largest accepted distance between `webhook-timestamp` and now, past or future.
    #[serde(with = "humantime_serde")]
    pub tolerance: Duration,
    /// How long processed `webhook-id`s are remembered (at least the tolerance).
    #[serde(with = "humantime_serde")]
    pub replay_retention: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            tolerance: Duration::from_secs(300),
            replay_retention: Duration::from_secs(24 * 3600),
        }
    }
}

impl WebhookConfig {
    /// Checks the tolerance and the replay window.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.tolerance.is_zero() {
            return Err(invalid("webhooks.tolerance".into(), "must be positive"));
        }
        if self.replay_retention < self.tolerance {
            return Err(invalid(
                "webhooks.replay_retention".into(),
                "must be at least webhooks.tolerance, or a replay inside the window would pass",
            ));
        }
        Ok(())
    }
}
