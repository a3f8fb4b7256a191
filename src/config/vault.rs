//! `[vault]`: how sever reaches Vault (address, auth, TLS) and which of its modes run
//! (subscriber, watcher). Uses only `config`'s own types.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, SecretRef, TargetConfig, invalid};

/// How sever reaches Vault and which of its modes run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.internal:8200`.
    pub address: String,
    /// Default namespace (Enterprise), e.g. `admin/team`.
    pub namespace: Option<String>,
    /// How sever logs in.
    pub auth: VaultAuth,
    /// TLS to Vault.
    #[serde(default)]
    pub tls: VaultTls,
    /// Event subscription over a websocket (Vault Enterprise).
    #[serde(default)]
    pub subscriber: VaultSubscriber,
    /// Polling of static roles for rotations (every edition).
    pub watcher: Option<VaultWatcher>,
}

/// Vault auth methods sever supports; tokens are renewed before they expire.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "method", rename_all = "snake_case")]
pub enum VaultAuth {
    /// A token.
    Token {
        /// The token.
        token: SecretRef,
    },
    /// AppRole login.
    Approle {
        /// Role id (not secret on its own).
        role_id: String,
        /// Secret id.
        secret_id: SecretRef,
        /// Auth mount path.
        #[serde(default = "default_approle_mount")]
        mount: String,
    },
    /// Kubernetes service-account login.
    Kubernetes {
        /// Vault role.
        role: String,
        /// Service-account token file.
        #[serde(default = "default_k8s_jwt")]
        jwt_file: std::path::PathBuf,
        /// Auth mount path.
        #[serde(default = "default_k8s_mount")]
        mount: String,
    },
}

fn default_approle_mount() -> String {
    "approle".into()
}

fn default_k8s_mount() -> String {
    "kubernetes".into()
}

fn default_k8s_jwt() -> std::path::PathBuf {
    "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
}

/// TLS settings for Vault.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VaultTls {
    /// PEM CA bundle to trust instead of the system roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate (mutual TLS).
    pub client_cert_file: Option<std::path::PathBuf>,
    /// PEM client key.
    pub client_key_file: Option<std::path::PathBuf>,
    /// Accept any certificate. Only for testing; logged loudly.
    #[serde(default)]
    pub skip_verify: bool,
}

/// The websocket event subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultSubscriber {
    /// Subscribe at start-up.
    pub enabled: bool,
    /// Event types (wildcards allowed), one subscription each.
    pub event_types: Vec<String>,
    /// Child namespaces to include (Enterprise).
    pub namespaces: Vec<String>,
}

impl Default for VaultSubscriber {
    fn default() -> Self {
        Self {
            enabled: false,
            event_types: vec!["database/*".into(), "kv-v2/data-write".into()],
            namespaces: Vec::new(),
        }
    }
}

/// Polling of static roles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultWatcher {
    /// How often to read the static roles.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Mounts whose every static role is watched: a role's `username` on `target` is then in
    /// scope without a credential of its own.
    #[serde(default)]
    pub mounts: Vec<WatchedMount>,
}

/// A database secrets-engine mount whose static roles all rotate logins on one target.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatchedMount {
    /// Mount path, e.g. `database`.
    pub mount: String,
    /// Target the roles' usernames live on.
    pub target: String,
    /// Namespace (Enterprise); default: `vault.namespace`.
    pub namespace: Option<String>,
}

impl VaultConfig {
    /// Checks the address, the client certificate pair and the watcher's interval and mounts.
    pub(super) fn validate(
        &self,
        targets: &BTreeMap<String, TargetConfig>,
    ) -> Result<(), ConfigError> {
        if url::Url::parse(&self.address).is_err() {
            return Err(invalid(
                "self.address".into(),
                "must be a URL like https://vault:8200",
            ));
        }
        if self.tls.client_cert_file.is_some() != self.tls.client_key_file.is_some() {
            return Err(invalid(
                "self.tls".into(),
                "client_cert_file and client_key_file go together",
            ));
        }
        if let Some(watcher) = &self.watcher {
            if watcher.interval.is_zero() {
                return Err(invalid("self.watcher.interval".into(), "must be positive"));
            }
            for (i, m) in watcher.mounts.iter().enumerate() {
                if !targets.contains_key(&m.target) {
                    return Err(invalid(
                        format!("self.watcher.mounts[{i}].target"),
                        &format!("no target named {:?}", m.target),
                    ));
                }
            }
        }
        Ok(())
    }
}
