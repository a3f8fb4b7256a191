//! When an action acts, if not at once: at a time (`not_before`), or when a named maintenance
//! window opens (`window`), announced `notify_before` ahead. The plan carries its schedule,
//! so it survives restarts and failover with the action.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
