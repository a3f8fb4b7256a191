//! When an action acts, if not at once: at a time (`not_before`), or when a named maintenance
//! window opens (`window`), announced `notify_before` ahead. The plan carries its schedule,
//! so it survives restarts and failover with the action.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a request asks about its timing: the fields revocations, locks and drains accept,
/// and credentials and policies configure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRequest {
    /// Announce this long before acting (e.g. `15m`); acts only after that.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub notify_before: Option<Duration>,
    /// Act at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// Act when this `[[windows]]` window is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// How long a window-bound action may wait for its window (default 7d).
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_wait: Option<Duration>,
    /// Do not act unless the announcement was delivered by then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_announcement: bool,
}

impl ScheduleRequest {
    /// Whether it asks for anything but acting at once.
    pub fn is_set(&self) -> bool {
        self.notify_before.is_some() || self.not_before.is_some() || self.window.is_some()
    }
}

/// An action's schedule, as decided when it was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// When it acts: its steps are due then.
    pub act_at: DateTime<Utc>,
    /// When its announcement goes out; `None` without `notify_before`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_at: Option<DateTime<Utc>>,
    /// The window it waits for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// It acts only if its announcement was delivered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_announcement: bool,
    /// No opening of its window came within `max_wait`: it ends as `expired`, acting on
    /// nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
}
