//! `[store]` and `[audit]`: where audit records and service state live, and the
//! checkpoints of the audit trail. Uses only `config`'s own types.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, SecretRef, UrlSource, invalid};

/// Audit and state store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://…` (default, embedded) or `postgres://…`.
    pub url: UrlSource,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: UrlSource::Inline("sqlite://sever.db?mode=rwc".into()),
        }
    }
}

/// Checkpoints of the audit trail's head, so that truncating its tail is detectable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How often a checkpoint is written, whether or not records were added.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// HMAC-SHA256 key (at least 32 bytes); without it checkpoints are unkeyed.
    pub checkpoint_key: Option<SecretRef>,
    /// Earlier keys, so checkpoints made before a key rotation still verify.
    pub checkpoint_previous_keys: Vec<SecretRef>,
    /// File every checkpoint is also appended to as a JSON line (keep it off the store).
    pub checkpoint_file: Option<PathBuf>,
    /// The last unkeyed checkpoint written before `checkpoint_key` was configured: with a key,
    /// unkeyed checkpoints are accepted up to this one and nowhere else.
    pub unkeyed_checkpoints_through: Option<UnkeyedPin>,
}

/// Pins the unkeyed checkpoints from before the key by the last one's index and digest: the
/// digest covers its predecessor's, so it fixes the whole unkeyed prefix, and nobody can
/// write a different prefix that matches it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnkeyedPin {
    /// The checkpoint's index.
    pub index: i64,
    /// Its `mac` column (the hex SHA-256 digest of an unkeyed checkpoint).
    pub mac: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_key: None,
            checkpoint_previous_keys: Vec::new(),
            checkpoint_file: None,
            unkeyed_checkpoints_through: None,
        }
    }
}

impl AuditConfig {
    /// Checks the checkpoint interval, the earlier keys and the unkeyed pin.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.checkpoint_interval < Duration::from_secs(1) {
            return Err(invalid(
                "audit.checkpoint_interval".into(),
                "must be at least 1s",
            ));
        }
        if self.checkpoint_key.is_none() && !self.checkpoint_previous_keys.is_empty() {
            return Err(invalid(
                "audit.checkpoint_previous_keys".into(),
                "needs audit.checkpoint_key, the key new checkpoints are made with",
            ));
        }
        if let Some(pin) = &self.unkeyed_checkpoints_through {
            const PIN: &str = "audit.unkeyed_checkpoints_through";
            if self.checkpoint_key.is_none() {
                return Err(invalid(
                    PIN.into(),
                    "needs audit.checkpoint_key: without a key every checkpoint is unkeyed",
                ));
            }
            if pin.index < 1 {
                return Err(invalid(format!("{PIN}.index"), "must be at least 1"));
            }
            let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
            if pin.mac.len() != 64 || !pin.mac.chars().all(hex) {
                return Err(invalid(
                    format!("{PIN}.mac"),
                    "must be the checkpoint's mac: 64 lowercase hex digits",
                ));
            }
        }
        Ok(())
    }
}
