//! SHIM, replaced by the notifications branch: the API the announcer calls.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::store::Store;

/// Event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// announcement.made
    AnnouncementMade,
    /// announcement.cancelled
    AnnouncementCancelled,
}

/// A notification.
#[derive(Debug, Clone, Default)]
pub struct Notice {
    /// Event.
    pub event: Option<Event>,
    /// Action.
    pub action_id: Option<uuid::Uuid>,
    /// Credential.
    pub credential: Option<String>,
    /// Policy.
    pub policy: Option<String>,
    /// Targets.
    pub targets: Vec<String>,
    /// Logins.
    pub logins: Vec<String>,
    /// Counts.
    pub counts: BTreeMap<String, u64>,
    /// Reason.
    pub reason: Option<String>,
    /// At.
    pub at: Option<DateTime<Utc>>,
    /// Act at.
    pub act_at: Option<DateTime<Utc>>,
    /// Apps.
    pub application_names: Vec<String>,
    /// Addrs.
    pub client_addrs: Vec<String>,
}

/// Errors.
#[derive(Debug, thiserror::Error)]
#[error("notify: {0}")]
pub struct NotifyError(String);

/// Notifier.
#[derive(Debug)]
pub struct Notifier;

impl Notifier {
    /// New.
    pub fn new(_config: &Config, _store: Store) -> Result<Self, NotifyError> {
        Ok(Self)
    }
    /// Notify.
    pub async fn notify(&self, _notice: &Notice) -> Result<Vec<uuid::Uuid>, NotifyError> {
        Ok(Vec::new())
    }
    /// Delivered.
    pub async fn delivered(&self, _ids: &[uuid::Uuid]) -> Result<bool, NotifyError> {
        Ok(true)
    }
}
