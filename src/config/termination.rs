//! `[termination]`: the timeouts applied per target. Nothing to validate: any duration holds.

use std::time::Duration;

use serde::Deserialize;

/// Timeouts applied per target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TerminationConfig {
    /// Upper bound for finding and terminating sessions on one target.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long to wait for terminated sessions to disappear.
    #[serde(with = "humantime_serde")]
    pub verify_timeout: Duration,
}

impl Default for TerminationConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            verify_timeout: Duration::from_secs(5),
        }
    }
}
