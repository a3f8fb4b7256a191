//! When an action acts, if not at once, as requests ask and credentials and policies
//! configure it: the fields they share (`notify_before`, `not_before`, `window`, `max_wait`,
//! `require_announcement`). `resolve::schedule` turns them into an action's schedule.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a request asks about its timing: the fields revocations, locks and drains accept,
/// and credentials and policies configure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleRequest {
    /// Announce this long before acting (e.g. `15m`); acts only after that.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
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
    #[schema(value_type = Option<String>)]
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
