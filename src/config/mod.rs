//! The service's configuration: TOML, strictly validated, secrets kept outside the file.

pub mod names;
mod own_logins;
mod secret;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use secret::{SecretRef, UrlSource, redact_url};

use names::NameKind;

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
}

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

/// AWS access and intake settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region of the secrets; default: the AWS SDK's region chain (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Secrets Manager endpoint override (VPC endpoint, FIPS endpoint, or a local stand-in).
    pub endpoint_url: Option<String>,
    /// Static access keys; without them the SDK's default chain applies (env, web identity
    /// / IRSA, container and instance metadata).
    pub static_credentials: Option<StaticCredentials>,
    /// EventBridge API-destination intake.
    #[serde(default)]
    pub eventbridge: EventBridgeConfig,
    /// SNS HTTPS-subscription intake.
    #[serde(default)]
    pub sns: SnsConfig,
}

/// An access key pair, both halves kept outside the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: SecretRef,
    /// Secret access key.
    pub secret_access_key: SecretRef,
}

/// EventBridge API destinations cannot sign requests; they send an API-key header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventBridgeConfig {
    /// Accepted API keys (several, so a key can be rotated).
    pub api_keys: Vec<SecretRef>,
    /// Header the API destination's connection sends the key in.
    pub header: String,
}

impl Default for EventBridgeConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            header: "x-sever-api-key".into(),
        }
    }
}

/// SNS topics whose HTTPS notifications sever accepts.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SnsConfig {
    /// Topic ARNs; subscriptions are confirmed for these only.
    #[serde(default)]
    pub topics: Vec<String>,
}

/// HTTP listener settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on: everything, or only the event intake when `operator_listen` is set.
    pub listen: SocketAddr,
    /// Optional separate address for the operator API (and health checks).
    pub operator_listen: Option<SocketAddr>,
    /// Upper bound for one request once its headers are in: reading the body, handling it,
    /// including `?wait=true` executions.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Upper bound for receiving a request's headers, and for an idle keep-alive connection
    /// to start its next request.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections served at once on `listen`; further ones wait in the accept queue. Unset:
    /// 1024, or fewer if the open-file limit needs it (see `crate::fds`).
    pub max_connections: Option<usize>,
    /// The same for `operator_listen`. Unset: 64, or fewer if the open-file limit needs it.
    pub operator_max_connections: Option<usize>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            operator_listen: None,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_connections: None,
            operator_max_connections: None,
            max_body_bytes: 64 * 1024,
        }
    }
}

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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

/// The durable work queue every action runs from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Steps (one action on one target) this process runs at once.
    pub concurrency: usize,
    /// Steps of one target this process runs at once, so a target that stops answering can
    /// hold no more than this many of the `concurrency` slots; unset: a quarter of
    /// `concurrency`, at least 1.
    pub per_target: Option<usize>,
    /// How long a claimed step stays with its process without a renewal; a replica that dies
    /// holding work gives it up after at most this long.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How long a failing target is retried, from when the action was accepted.
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
    /// Longest wait between two retries of a failing target.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How often the queue is checked for work another replica added or a lease freed.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long finished actions stay in the queue (for `GET /v1/actions/{id}`); the audit
    /// trail keeps their records regardless.
    #[serde(with = "humantime_serde")]
    pub keep_finished: Duration,
}

impl QueueConfig {
    /// Steps of one target this process runs at once: `per_target`, or a quarter of
    /// `concurrency` (at least 1), never more than `concurrency`.
    pub fn per_target_limit(&self) -> usize {
        self.per_target
            .unwrap_or(self.concurrency / 4)
            .clamp(1, self.concurrency.max(1))
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            per_target: None,
            lease: Duration::from_secs(15),
            retry_for: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(60),
            poll_interval: Duration::from_millis(250),
            keep_finished: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Default for TerminationConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            verify_timeout: Duration::from_secs(5),
        }
    }
}

/// An operator: a name for the audit trail and the SHA-256 of their bearer token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Recorded as the actor in audit records.
    pub name: String,
    /// Hex SHA-256 of the token (`sever operator-token` makes one).
    pub token_sha256: String,
}

/// Database engines sever can terminate sessions on.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// PostgreSQL 10 or later.
    Postgres,
    /// MySQL 8 or MariaDB 10.5 or later.
    Mysql,
    /// Microsoft SQL Server 2016 or later, or Azure SQL (`url` is an ADO.NET connection string).
    Sqlserver,
}

/// One database server (or cluster) sever connects to with its own admin login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Which engine speaks there.
    pub engine: Engine,
    /// Connection URL of sever's admin login.
    pub url: UrlSource,
    /// Logins never terminated on this target, in addition to the global list.
    #[serde(default)]
    pub protected_logins: Vec<String>,
    /// Connections kept in this target's pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Upper bound for opening a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Periodic sweep for sessions of dropped or expired (e.g. Vault dynamic) logins.
    pub sweep: Option<SweepConfig>,
    /// MySQL on Amazon RDS: terminate with `CALL mysql.rds_kill(id)` instead of `KILL`.
    #[serde(default)]
    pub rds: bool,
}

/// Sessions whose login was dropped, or whose login matches `pattern` and has expired
/// (`VALID UNTIL` in the past), are terminated every `interval`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// SQL `LIKE` pattern of the logins to check for expiry, e.g. Vault's `v-%`.
    pub pattern: String,
    /// How often to sweep.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How often the running sweeper learns the roles matching `pattern`, between sweeps. A
    /// dropped role's sessions are ended only when sever learned the role while it existed,
    /// so this bounds how short-lived a dynamic login may be and still be swept.
    #[serde(default = "default_learn_interval", with = "humantime_serde")]
    pub learn_interval: Duration,
}

fn default_learn_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_pool_size() -> u32 {
    2
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// What a rotation of a credential does to the sessions of its logins.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RotationPolicy {
    /// Terminate sessions that began before the rotation's cutoff.
    #[default]
    TerminateBeforeCutoff,
    /// Terminate every session of the login.
    TerminateAll,
    /// Record the rotation and terminate nothing.
    None,
}

/// A credential and the logins it can reach.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Free text for people.
    #[serde(default)]
    pub description: Option<String>,
    /// What a `rotated` event does (a `revoked` event always terminates every session).
    #[serde(default)]
    pub policy: RotationPolicy,
    /// The logins this credential authenticates, per target. May be empty for an AWS
    /// secret, whose own `username` then names the login.
    #[serde(default)]
    pub logins: Vec<LoginMapping>,
    /// The AWS Secrets Manager secret this credential is.
    pub aws: Option<CredentialAws>,
    /// The Vault static role or KV secret this credential is.
    pub vault: Option<CredentialVault>,
}

/// Ties a credential to a Vault database static role or a kv-v2 secret.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialVault {
    /// Secrets engine mount path, e.g. `database` or `secret`.
    pub mount: String,
    /// Static role name (database engine).
    pub role: Option<String>,
    /// Secret path inside a kv-v2 mount (without `data/`).
    pub kv_path: Option<String>,
    /// Namespace (Enterprise); default: the root or `vault.namespace`.
    pub namespace: Option<String>,
    /// Target of the static role's login when `logins` is empty.
    pub target: Option<String>,
}

/// Ties a credential to an AWS Secrets Manager secret.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialAws {
    /// Secret ARN or name.
    pub secret: String,
    /// Target of the derived login when `logins` is empty; default: the target whose
    /// engine, host and port match the secret's.
    pub target: Option<String>,
    /// Alternating-users rotation: what happens to the previous user's sessions.
    #[serde(default)]
    pub previous_user: PreviousUserPolicy,
}

/// In AWS's alternating-users strategy the previous user stays valid by design.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PreviousUserPolicy {
    /// Leave the previous user's sessions alone (AWS's intent).
    #[default]
    Keep,
    /// Also terminate the previous user's sessions that began before the cutoff.
    Terminate,
}

/// One login on one target.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct LoginMapping {
    /// Target id.
    pub target: String,
    /// Login (role) name on that target.
    pub login: String,
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
        let invalid = |path: String, reason: &str| ConfigError::Invalid {
            path,
            reason: reason.to_owned(),
        };
        if self.webhooks.tolerance.is_zero() {
            return Err(invalid("webhooks.tolerance".into(), "must be positive"));
        }
        if self.webhooks.replay_retention < self.webhooks.tolerance {
            return Err(invalid(
                "webhooks.replay_retention".into(),
                "must be at least webhooks.tolerance, or a replay inside the window would pass",
            ));
        }
        if self.audit.checkpoint_interval < Duration::from_secs(1) {
            return Err(invalid(
                "audit.checkpoint_interval".into(),
                "must be at least 1s",
            ));
        }
        if self.audit.checkpoint_key.is_none() && !self.audit.checkpoint_previous_keys.is_empty() {
            return Err(invalid(
                "audit.checkpoint_previous_keys".into(),
                "needs audit.checkpoint_key, the key new checkpoints are made with",
            ));
        }
        if let Some(pin) = &self.audit.unkeyed_checkpoints_through {
            const PIN: &str = "audit.unkeyed_checkpoints_through";
            if self.audit.checkpoint_key.is_none() {
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
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes".into(), "must be positive"));
        }
        if self.queue.concurrency == 0 {
            return Err(invalid("queue.concurrency".into(), "must be positive"));
        }
        if self.queue.per_target == Some(0) {
            return Err(invalid("queue.per_target".into(), "must be positive"));
        }
        if self.queue.lease < Duration::from_secs(1) {
            // Leases are renewed every third of their length; shorter than a second would
            // spend the store's capacity on renewals.
            return Err(invalid("queue.lease".into(), "must be at least 1s"));
        }
        if self.queue.poll_interval.is_zero() || self.queue.max_backoff.is_zero() {
            return Err(invalid(
                "queue".into(),
                "poll_interval and max_backoff must be positive",
            ));
        }
        for (path, value) in [
            ("server.max_connections", self.server.max_connections),
            (
                "server.operator_max_connections",
                self.server.operator_max_connections,
            ),
        ] {
            if value == Some(0) {
                return Err(invalid(path.into(), "must be positive"));
            }
        }
        for (path, value) in [
            ("server.request_timeout", self.server.request_timeout),
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(path.into(), "must be positive"));
            }
        }
        if self.server.operator_listen == Some(self.server.listen) {
            return Err(invalid(
                "server.operator_listen".into(),
                "must differ from server.listen (leave it unset to serve everything there)",
            ));
        }
        for (i, login) in self.protected_logins.iter().enumerate() {
            names::check(NameKind::Login, login)
                .map_err(|e| invalid(format!("protected_logins[{i}]"), &e.to_string()))?;
        }
        if let Some(vault) = &self.vault {
            if url::Url::parse(&vault.address).is_err() {
                return Err(invalid(
                    "vault.address".into(),
                    "must be a URL like https://vault:8200",
                ));
            }
            if vault.tls.client_cert_file.is_some() != vault.tls.client_key_file.is_some() {
                return Err(invalid(
                    "vault.tls".into(),
                    "client_cert_file and client_key_file go together",
                ));
            }
            if let Some(watcher) = &vault.watcher {
                if watcher.interval.is_zero() {
                    return Err(invalid("vault.watcher.interval".into(), "must be positive"));
                }
                for (i, m) in watcher.mounts.iter().enumerate() {
                    if !self.targets.contains_key(&m.target) {
                        return Err(invalid(
                            format!("vault.watcher.mounts[{i}].target"),
                            &format!("no target named {:?}", m.target),
                        ));
                    }
                }
            }
        }
        for (id, target) in &self.targets {
            check_id(id).map_err(|r| invalid(format!("targets.{id}"), r))?;
            if target.sweep.is_some() && target.engine != Engine::Postgres {
                return Err(invalid(
                    format!("targets.{id}.sweep"),
                    "sweeps find dropped or expired roles, which only PostgreSQL targets have",
                ));
            }
            if target.rds && target.engine != Engine::Mysql {
                return Err(invalid(
                    format!("targets.{id}.rds"),
                    "applies to MySQL targets only",
                ));
            }
            if let Some(sweep) = &target.sweep
                && (sweep.pattern.is_empty()
                    || sweep.interval.is_zero()
                    || sweep.learn_interval.is_zero())
            {
                return Err(invalid(
                    format!("targets.{id}.sweep"),
                    "pattern must not be empty and interval and learn_interval must be positive",
                ));
            }
            if target.pool_size == 0 {
                return Err(invalid(
                    format!("targets.{id}.pool_size"),
                    "must be positive",
                ));
            }
            for (i, login) in target.protected_logins.iter().enumerate() {
                names::check_on(NameKind::Login, login, id, target.engine).map_err(|e| {
                    invalid(
                        format!("targets.{id}.protected_logins[{i}]"),
                        &e.to_string(),
                    )
                })?;
            }
        }
        for (id, credential) in &self.credentials {
            let path = format!("credentials.{id}");
            check_id(id).map_err(|r| invalid(path.clone(), r))?;
            let derives_logins = credential.aws.is_some()
                || credential
                    .vault
                    .as_ref()
                    .is_some_and(|v| v.role.is_some() && v.target.is_some());
            if credential.logins.is_empty() && !derives_logins {
                return Err(invalid(
                    format!("{path}.logins"),
                    "must name at least one login (or take it from credentials.<id>.aws, or from \
                     credentials.<id>.vault with a role and a target)",
                ));
            }
            if let Some(vault) = &credential.vault {
                if self.vault.is_none() {
                    return Err(invalid(format!("{path}.vault"), "needs a [vault] section"));
                }
                if vault.role.is_some() == vault.kv_path.is_some() {
                    return Err(invalid(
                        format!("{path}.vault"),
                        "set exactly one of role (database static role) or kv_path (kv-v2 secret)",
                    ));
                }
                if let Some(target) = &vault.target
                    && !self.targets.contains_key(target)
                {
                    return Err(invalid(
                        format!("{path}.vault.target"),
                        &format!("no target named {target:?}"),
                    ));
                }
                if credential.aws.is_some() {
                    return Err(invalid(
                        path.clone(),
                        "a credential is either an AWS or a Vault secret",
                    ));
                }
            }
            if let Some(aws) = &credential.aws {
                if aws.secret.trim().is_empty() {
                    return Err(invalid(format!("{path}.aws.secret"), "must not be empty"));
                }
                if let Some(target) = &aws.target
                    && !self.targets.contains_key(target)
                {
                    return Err(invalid(
                        format!("{path}.aws.target"),
                        &format!("no target named {target:?}"),
                    ));
                }
                let twin = self.credentials.iter().find(|(other, c)| {
                    *other != id && c.aws.as_ref().is_some_and(|a| a.secret == aws.secret)
                });
                if let Some((other, _)) = twin {
                    return Err(invalid(
                        format!("{path}.aws.secret"),
                        &format!("credential {other:?} maps the same secret"),
                    ));
                }
            }
            let mut seen = BTreeSet::new();
            for (i, mapping) in credential.logins.iter().enumerate() {
                let at = format!("{path}.logins[{i}]");
                if !self.targets.contains_key(&mapping.target) {
                    return Err(invalid(
                        format!("{at}.target"),
                        &format!("no target named {:?}", mapping.target),
                    ));
                }
                let engine = self.targets[&mapping.target].engine;
                names::check_on(NameKind::Login, &mapping.login, &mapping.target, engine)
                    .map_err(|e| invalid(format!("{at}.login"), &e.to_string()))?;
                if self.protected_on(&mapping.target).contains(&mapping.login) {
                    return Err(invalid(
                        format!("{at}.login"),
                        &format!(
                            "{:?} is protected on target {:?} and cannot be mapped to a credential",
                            mapping.login, mapping.target
                        ),
                    ));
                }
                if !seen.insert(mapping) {
                    return Err(invalid(at, "duplicate login mapping"));
                }
            }
        }
        if self.aws.eventbridge.header.is_empty()
            || axum::http::HeaderName::from_bytes(self.aws.eventbridge.header.as_bytes()).is_err()
        {
            return Err(invalid(
                "aws.eventbridge.header".into(),
                "must be a valid HTTP header name",
            ));
        }
        for (i, topic) in self.aws.sns.topics.iter().enumerate() {
            if !topic.starts_with("arn:") || topic.split(':').count() != 6 {
                return Err(invalid(
                    format!("aws.sns.topics[{i}]"),
                    "must be an SNS topic ARN",
                ));
            }
        }
        let mut names = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        for (i, op) in self.operators.iter().enumerate() {
            let path = format!("operators[{i}]");
            if op.name.trim().is_empty() || op.name.len() > 128 {
                return Err(invalid(
                    format!("{path}.name"),
                    "must be 1 to 128 characters",
                ));
            }
            if !names.insert(op.name.as_str()) {
                return Err(invalid(format!("{path}.name"), "duplicate operator name"));
            }
            let hash = op.token_sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    format!("{path}.token_sha256"),
                    "must be 64 hex characters (run `sever operator-token`)",
                ));
            }
            if !hashes.insert(hash) {
                return Err(invalid(
                    format!("{path}.token_sha256"),
                    "the same token is configured for two operators",
                ));
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        protected_logins = ["postgres"]
        [webhooks]
        secrets = [{ env = "X" }]
        [[operators]]
        name = "alice"
        token_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
        [targets.pg]
        engine = "postgres"
        url = "postgres://sever@localhost/postgres"
        [credentials.app]
        logins = [{ target = "pg", login = "app" }]
    "#;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_complete_config_parses_with_defaults() {
        let config = Config::parse(GOOD).unwrap();
        assert_eq!(config.webhooks.tolerance, Duration::from_secs(300));
        assert_eq!(
            config.credentials["app"].policy,
            RotationPolicy::TerminateBeforeCutoff
        );
        assert!(config.protected_on("pg").contains("postgres"));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../config/sever.example.toml");
        let config = Config::parse(text).unwrap();
        assert_eq!(config.credentials["orders-app"].logins.len(), 2);
        assert!(config.protected_on("orders-db").contains("orders_migrator"));
        assert_eq!(config.audit.checkpoint_interval, Duration::from_secs(60));
        assert!(config.audit.checkpoint_key.is_some() && config.audit.checkpoint_file.is_some());
    }

    #[test]
    fn audit_checkpoints_default_to_every_minute_unkeyed_with_a_warning() {
        let config = Config::parse(GOOD).unwrap();
        assert_eq!(config.audit.checkpoint_interval, Duration::from_secs(60));
        assert!(config.audit.checkpoint_key.is_none());
        assert!(
            config
                .warnings()
                .iter()
                .any(|w| w.contains("audit.checkpoint_key"))
        );
        let keyed = format!("{GOOD}\n[audit]\ncheckpoint_key = {{ env = \"K\" }}\n");
        let config = Config::parse(&keyed).unwrap();
        assert!(
            !config
                .warnings()
                .iter()
                .any(|w| w.contains("audit.checkpoint_key"))
        );
        let orphan = format!("{GOOD}\n[audit]\ncheckpoint_previous_keys = [{{ env = \"K\" }}]\n");
        assert!(err(&orphan).contains("audit.checkpoint_previous_keys"));
        let e = err(&format!("{GOOD}\n[audit]\ncheckpoint_interval = \"0s\"\n"));
        assert!(e.contains("audit.checkpoint_interval"), "{e}");
        assert!(
            err(&format!("{GOOD}\n[audit]\ncheckpoint_every = \"1m\"\n"))
                .contains("checkpoint_every")
        );
    }

    #[test]
    fn an_unkeyed_checkpoint_pin_needs_a_key_an_index_and_a_digest() {
        let mac = "ab".repeat(32);
        let pin = |index: i64, mac: &str| {
            format!("[audit]\nunkeyed_checkpoints_through = {{ index = {index}, mac = {mac:?} }}\n")
        };
        let keyed = format!("{GOOD}\n[audit]\ncheckpoint_key = {{ env = \"K\" }}\n");
        let config =
            Config::parse(&format!("{keyed}{}", pin(7, &mac).replace("[audit]\n", ""))).unwrap();
        let pinned = config.audit.unkeyed_checkpoints_through.unwrap();
        assert_eq!((pinned.index, pinned.mac), (7, mac.clone()));
        let e = err(&format!("{GOOD}\n{}", pin(7, &mac)));
        assert!(e.contains("needs audit.checkpoint_key"), "{e}");
        let with_key =
            |index: i64, mac: &str| format!("{keyed}{}", pin(index, mac).replace("[audit]\n", ""));
        assert!(err(&with_key(0, &mac)).contains("unkeyed_checkpoints_through.index"));
        assert!(err(&with_key(7, "abc")).contains("unkeyed_checkpoints_through.mac"));
        assert!(err(&with_key(7, &"AB".repeat(32))).contains("lowercase hex"));
    }

    #[test]
    fn the_kubernetes_config_is_valid() {
        let text = include_str!("../../integrations/kubernetes/sever.toml");
        let config = Config::parse(text).unwrap();
        assert!(config.server.operator_listen.is_some());
        assert_eq!(
            config.store.url,
            UrlSource::Secret(SecretRef::Env("SEVER_STORE_URL".into()))
        );
    }

    #[test]
    fn empty_config_is_the_embedded_default() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert!(config.targets.is_empty());
        assert_eq!(config.server.operator_listen, None);
        assert_eq!(config.server.header_read_timeout, Duration::from_secs(10));
        // Unset: sized at start to fit the open-file limit.
        assert_eq!(config.server.max_connections, None);
        assert_eq!(config.server.operator_max_connections, None);
    }

    #[test]
    fn server_limits_are_checked() {
        let config = Config::parse(
            "[server]\nlisten = \"0.0.0.0:8080\"\noperator_listen = \"127.0.0.1:8081\"\n\
             header_read_timeout = \"2s\"\nmax_connections = 8\noperator_max_connections = 3",
        )
        .unwrap();
        assert_eq!(config.server.operator_listen.unwrap().port(), 8081);
        assert_eq!(config.server.header_read_timeout, Duration::from_secs(2));
        assert_eq!(config.server.max_connections, Some(8));
        assert_eq!(config.server.operator_max_connections, Some(3));
        for (text, path) in [
            ("max_connections = 0", "server.max_connections"),
            (
                "operator_max_connections = 0",
                "server.operator_max_connections",
            ),
            ("header_read_timeout = \"0s\"", "server.header_read_timeout"),
            ("request_timeout = \"0s\"", "server.request_timeout"),
            (
                "listen = \"127.0.0.1:9\"\noperator_listen = \"127.0.0.1:9\"",
                "server.operator_listen",
            ),
        ] {
            let e = err(&format!("[server]\n{text}"));
            assert!(e.contains(path), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(err("[server]\nlisen = \"127.0.0.1:1\"").contains("lisen"));
        let e = err(&GOOD.replace("engine = \"postgres\"", "engine = \"postgres\"\nfoo = 1"));
        assert!(e.contains("foo"), "{e}");
    }

    #[test]
    fn dangling_target_reference_is_an_error() {
        let e = err(&GOOD.replace("target = \"pg\"", "target = \"nope\""));
        assert!(e.contains("credentials.app.logins[0].target"), "{e}");
    }

    #[test]
    fn mapping_a_protected_login_is_an_error() {
        let e = err(&GOOD.replace("login = \"app\"", "login = \"postgres\""));
        assert!(e.contains("protected"), "{e}");
    }

    #[test]
    fn bad_operator_hash_and_duplicates_are_errors() {
        assert!(err(&GOOD.replace(&"0".repeat(64), "abc")).contains("token_sha256"));
        let twice = format!(
            "{GOOD}\n[[operators]]\nname = \"alice\"\ntoken_sha256 = \"{}\"",
            "1".repeat(64)
        );
        assert!(err(&twice).contains("duplicate operator"));
    }

    #[test]
    fn aws_credentials_may_derive_logins_but_not_share_a_secret() {
        let aws =
            format!("{GOOD}\n[credentials.rds]\n[credentials.rds.aws]\nsecret = \"prod/db\"\n");
        let config = Config::parse(&aws).unwrap();
        assert!(config.credentials["rds"].logins.is_empty());
        assert_eq!(
            config.credentials["rds"]
                .aws
                .as_ref()
                .unwrap()
                .previous_user,
            PreviousUserPolicy::Keep
        );
        let twin =
            format!("{aws}[credentials.rds2]\n[credentials.rds2.aws]\nsecret = \"prod/db\"\n");
        assert!(err(&twin).contains("maps the same secret"));
        let bad_target = aws.replace(
            "secret = \"prod/db\"",
            "secret = \"prod/db\"\ntarget = \"nope\"",
        );
        assert!(err(&bad_target).contains("credentials.rds.aws.target"));
        let no_logins = format!("{GOOD}\n[credentials.bare]\ndescription = \"x\"\n");
        assert!(err(&no_logins).contains("credentials.bare.logins"));
        assert!(
            err(&format!("{GOOD}\n[aws.sns]\ntopics = [\"not-an-arn\"]\n"))
                .contains("aws.sns.topics[0]")
        );
    }

    #[test]
    fn unknown_engine_and_policy_are_errors() {
        assert!(
            err(&GOOD.replace("engine = \"postgres\"", "engine = \"oracle\"")).contains("oracle")
        );
        let e = err(&GOOD.replace(
            "[credentials.app]",
            "[credentials.app]\npolicy = \"sometimes\"",
        ));
        assert!(e.contains("sometimes"), "{e}");
    }

    #[test]
    fn a_sweep_learns_every_two_seconds_unless_told_and_never_every_zero() {
        let sweep = |extra: &str| {
            format!("{GOOD}\n[targets.pg.sweep]\npattern = \"v-%\"\ninterval = \"5m\"\n{extra}")
        };
        let config = Config::parse(&sweep("")).unwrap();
        let learn = config.targets["pg"].sweep.as_ref().unwrap().learn_interval;
        assert_eq!(learn, Duration::from_secs(2));
        let config = Config::parse(&sweep("learn_interval = \"500ms\"\n")).unwrap();
        let learn = config.targets["pg"].sweep.as_ref().unwrap().learn_interval;
        assert_eq!(learn, Duration::from_millis(500));
        let e = err(&sweep("learn_interval = \"0s\"\n"));
        assert!(
            e.contains("targets.pg.sweep") && e.contains("learn_interval"),
            "{e}"
        );
    }
}
