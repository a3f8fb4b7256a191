//! The service's configuration: TOML, strictly validated, secrets kept outside the file.
//! One file per section (`server`, `store` with `audit`, `webhooks`, `queue`, `termination`,
//! `targets`, `credentials`, `operators`, `metrics`, `vault`, `aws`, `windows`, `policies`,
//! `alertmanager`, `notify`), each with its own `validate()`, which `Config::validate` calls in turn;
//! every type is re-exported here as
//! `crate::config::X`. May call `fds` (a leaf) and nothing else of the crate.

mod alertmanager;
mod aws;
mod credentials;
pub mod names;
mod notify;
mod operators;
mod own_logins;
mod policies;
mod prometheus;
mod queue;
mod schedule;
mod secret;
mod server;
mod store;
mod targets;
mod termination;
mod vault;
mod webhooks;
mod windows;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use secrecy::SecretString;
use serde::Deserialize;

pub use alertmanager::{AlertRoute, AlertmanagerConfig};
pub use aws::{AwsConfig, EventBridgeConfig, SnsConfig, StaticCredentials};
pub use credentials::{
    CredentialAws, CredentialConfig, CredentialVault, LoginMapping, PreviousUserPolicy,
    RotationPolicy,
};
pub use notify::{
    ChannelConfig, ChannelFilter, ChannelKind, Event as NotifyEvent, Include, NotifyConfig,
    PAGERDUTY_API, Severity, check_endpoint,
};
pub use operators::OperatorConfig;
pub use policies::{Enforcement, PolicyConfig, PolicyMode, PolicyTargets, SWEEP_PREFIX};
pub use prometheus::MetricsConfig;
pub use queue::QueueConfig;
pub use schedule::ScheduleRequest;
pub use secret::{SecretRef, UrlSource, redact_url};
pub use server::ServerConfig;
pub use store::{AuditConfig, StoreConfig, UnkeyedPin};
pub use targets::{Engine, SweepConfig, TargetConfig};
pub use termination::TerminationConfig;
pub use vault::{VaultAuth, VaultConfig, VaultSubscriber, VaultTls, VaultWatcher, WatchedMount};
pub use webhooks::WebhookConfig;
pub use windows::{TimeInterval, WindowConfig};

use crate::fds::{self, Budget};

/// Everything that can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema (unknown keys included).
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is out of range or a reference dangles.
    #[error("invalid config at {path}: {reason}")]
    Invalid {
        /// Dotted path of the offending key.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A secret could not be loaded; the value itself is never part of the message.
    #[error("cannot load {what} from {source_name}: {reason}")]
    Secret {
        /// Which secret.
        what: String,
        /// Where it should have come from.
        source_name: String,
        /// Why it failed.
        reason: String,
    },
}

/// The whole configuration, as validated.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP listener settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where audit records and service state live.
    #[serde(default)]
    pub store: StoreConfig,
    /// Audit trail checkpoints.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Signed-webhook intake.
    #[serde(default)]
    pub webhooks: WebhookConfig,
    /// Timeouts for terminating and verifying.
    #[serde(default)]
    pub termination: TerminationConfig,
    /// The durable work queue: concurrency, leases, retries.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Logins never terminated on any target.
    #[serde(default)]
    pub protected_logins: Vec<String>,
    /// People (or systems) allowed to call the operator API.
    #[serde(default)]
    pub operators: Vec<OperatorConfig>,
    /// Who may scrape `GET /metrics` on the operator listener; how often gauges are collected.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Database servers sever can terminate sessions on, by id.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
    /// Credentials that rotate, by stable id, and the logins they map to.
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// AWS Secrets Manager intake and lookups.
    #[serde(default)]
    pub aws: AwsConfig,
    /// HashiCorp Vault access, subscriber and watcher.
    pub vault: Option<VaultConfig>,
    /// Named maintenance windows (Alertmanager `time_intervals`), referred to by name.
    #[serde(default)]
    pub windows: Vec<WindowConfig>,
    /// Standing orders that end sessions by rule.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Alertmanager's webhook: its tokens and which alerts run which policy.
    #[serde(default)]
    pub alertmanager: AlertmanagerConfig,
    /// Outbound notifications: channels, and the bounds on their volume.
    #[serde(default)]
    pub notify: NotifyConfig,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Logins protected on `target`: the global list plus the target's own.
    pub fn protected_on(&self, target: &str) -> BTreeSet<String> {
        let mut set: BTreeSet<String> = self.protected_logins.iter().cloned().collect();
        if let Some(t) = self.targets.get(target) {
            set.extend(t.protected_logins.iter().cloned());
        }
        set
    }

    /// The maintenance window called `name`, if one is configured.
    pub fn window(&self, name: &str) -> Option<&WindowConfig> {
        self.windows.iter().find(|w| w.name == name)
    }

    /// Valid but probably unintended settings, for start-up logs and `check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.webhooks.secrets.is_empty() {
            warnings.push(
                "no webhooks.secrets configured: POST /v1/events refuses every delivery".into(),
            );
        }
        if self.operators.is_empty() {
            warnings.push("no operators configured: the operator API refuses every call".into());
        }
        if self.server.metrics_listen.is_none() && self.metrics.tokens_sha256.is_empty() {
            warnings.push(
                "neither server.metrics_listen nor metrics.tokens_sha256 configured: GET /metrics \
                 refuses every call (401)"
                    .into(),
            );
        }
        if let Some(addr) = self.server.metrics_listen
            && !server::is_private(addr.ip())
        {
            warnings.push(format!(
                "server.metrics_listen = {addr} is not a loopback or private address: GET /metrics \
                 there asks for no token, so anyone who can reach it reads the metrics"
            ));
        }
        if self.targets.is_empty() {
            warnings.push("no targets configured: nothing can be terminated".into());
        }
        if self.audit.checkpoint_key.is_none() {
            warnings.push(
                "no audit.checkpoint_key configured: audit checkpoints are unkeyed, so whoever \
                 can write the store can also rewrite them after truncating the trail"
                    .into(),
            );
        }
        warnings
    }

    /// Loads every webhook signing secret.
    pub fn webhook_secrets(&self) -> Result<Vec<SecretString>, ConfigError> {
        self.webhooks
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| s.load(&format!("webhooks.secrets[{i}]")))
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.webhooks.validate()?;
        self.audit.validate()?;
        self.server.validate()?;
        self.queue.validate()?;
        targets::validate_protected_logins(&self.protected_logins)?;
        if let Some(vault) = &self.vault {
            vault.validate(&self.targets)?;
        }
        targets::validate(&self.targets)?;
        credentials::validate(self)?;
        self.aws.validate()?;
        windows::validate(&self.windows)?;
        policies::validate(self)?;
        alertmanager::validate(self)?;
        operators::validate(&self.operators)?;
        self.notify.validate()?;
        self.metrics.validate(&self.operators)
    }

    /// Where the descriptors under the open-file `limit` go with this configuration, apart
    /// from the listeners.
    pub fn fd_budget(&self, limit: u64) -> Budget {
        // A target with locks holds one more connection, for its lock login.
        let targets = self
            .targets
            .values()
            .map(|t| u64::from(t.pool_size) + u64::from(t.locks))
            .sum();
        let vault_streams = self
            .vault
            .as_ref()
            .filter(|v| v.subscriber.enabled)
            .map_or(0, |v| v.subscriber.event_types.len() as u64);
        let outbound_clients = self.vault.is_some()
            || !self.aws.sns.topics.is_empty()
            || self.credentials.values().any(|c| c.aws.is_some())
            || !self.notify.channels.is_empty();
        Budget {
            limit,
            // The metrics listener's few connections come out of the reserve's side.
            reserve: fds::RESERVE
                + if self.server.metrics_listen.is_some() {
                    fds::METRICS_MAX_CONNECTIONS as u64
                } else {
                    0
                },
            store: fds::STORE_POOL,
            targets,
            checkpoint_file: u64::from(self.audit.checkpoint_file.is_some()),
            outbound: if outbound_clients {
                fds::OUTBOUND_HTTP
            } else {
                0
            } + vault_streams,
        }
    }
}

/// Target and credential ids appear in URLs, logs and audit records: keep them plain.
fn check_id(id: &str) -> Result<(), &'static str> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'));
    if ok {
        Ok(())
    } else {
        Err("ids are 1 to 128 characters of letters, digits, '_', '-', '.', ':' or '/'")
    }
}

/// A [`ConfigError::Invalid`] at `path` (a dotted key), for the sections' `validate()`.
fn invalid(path: String, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        path,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests;
