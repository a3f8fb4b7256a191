//! HashiCorp Vault: logging in (token, AppRole, Kubernetes) and staying logged in, reading
//! database static roles, and planning what a Vault rotation ends.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use vaultrs::client::{Client as _, Identity, VaultClient, VaultClientSettingsBuilder};

use super::{Origin, Plan, ResolveError, steps_for};
use crate::config::{Config, ConfigError, CredentialVault, RotationPolicy, VaultAuth, VaultConfig};
use crate::terminate::Scope;

/// Vault could not be asked, or answered unusably.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    /// Network, TLS, timeouts, 5xx.
    #[error("Vault unavailable: {0}")]
    Unavailable(String),
    /// Login or token refused.
    #[error("Vault refused sever's credentials: {0}")]
    Auth(String),
    /// No such static role.
    #[error("not found in Vault: {0}")]
    NotFound(String),
    /// A response sever cannot use.
    #[error("unexpected Vault response: {0}")]
    Malformed(String),
    /// The `[vault]` settings are unusable.
    #[error("invalid Vault settings: {0}")]
    Config(String),
}

impl From<ConfigError> for VaultError {
    fn from(e: ConfigError) -> Self {
        VaultError::Config(e.to_string())
    }
}

/// A database static role as `GET <mount>/static-roles/<name>` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct StaticRole {
    /// The database login Vault rotates.
    pub username: String,
    /// Vault's name for the database connection.
    pub db_name: String,
    /// When Vault last set the password: the exact cutoff.
    pub last_vault_rotation: DateTime<Utc>,
    /// Seconds between rotations (period roles).
    #[serde(default)]
    pub rotation_period: Option<u64>,
    /// Cron schedule (schedule roles).
    #[serde(default)]
    pub rotation_schedule: Option<String>,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

/// A logged-in Vault client that renews or re-acquires its token in the background.
pub struct Vault {
    client: RwLock<VaultClient>,
    config: VaultConfig,
    /// The token's lease in seconds once logged in (0: none known); `None` until then.
    lease: std::sync::Mutex<Option<u64>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("address", &self.config.address)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> VaultError {
    VaultError::Unavailable(e.to_string())
}

impl Vault {
    /// Builds the client (address, TLS, namespace) and logs in.
    pub async fn connect(config: &VaultConfig) -> Result<Arc<Self>, VaultError> {
        let tls = &config.tls;
        if tls.skip_verify {
            tracing::warn!("vault.tls.skip_verify is set: Vault's certificate is NOT verified");
        }
        let identity = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert)
                    .map_err(|e| VaultError::Config(format!("{}: {e}", cert.display())))?;
                pem.extend(
                    std::fs::read(key)
                        .map_err(|e| VaultError::Config(format!("{}: {e}", key.display())))?,
                );
                Some(Identity::from_pem(&pem).map_err(|_| {
                    VaultError::Config("client certificate or key is not valid PEM".into())
                })?)
            }
            _ => None,
        };
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(&config.address)
            // Explicit values, so VAULT_* variables in sever's environment change nothing.
            .ca_certs(
                tls.ca_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            )
            .verify(!tls.skip_verify)
            .identity(identity)
            .timeout(Some(Duration::from_secs(10)))
            .namespace(config.namespace.clone())
            .token(String::new());
        let client = VaultClient::new(
            settings
                .build()
                .map_err(|e| VaultError::Config(e.to_string()))?,
        )
        .map_err(|e| VaultError::Config(e.to_string()))?;
        let vault = Arc::new(Self {
            client: RwLock::new(client),
            config: config.clone(),
            lease: std::sync::Mutex::new(None),
        });
        // Vault being down must not keep sever from starting: keep_token_alive retries.
        match vault.login().await {
            Ok(lease) => *vault.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease),
            Err(e) => tracing::error!(error = %e, "Vault login failed; retrying in the background"),
        }
        Ok(vault)
    }

    /// Logs in with the configured method; returns the token's lease in seconds (0: none).
    async fn login(&self) -> Result<u64, VaultError> {
        let mut client = self.client.write().await;
        let auth = match &self.config.auth {
            VaultAuth::Token { token } => {
                let token = token.load("vault.auth.token")?;
                client.set_token(token.expose_secret());
                return Ok(0);
            }
            VaultAuth::Approle {
                role_id,
                secret_id,
                mount,
            } => {
                let secret_id = secret_id.load("vault.auth.secret_id")?;
                vaultrs::auth::approle::login(&*client, mount, role_id, secret_id.expose_secret())
                    .await
            }
            VaultAuth::Kubernetes {
                role,
                jwt_file,
                mount,
            } => {
                let jwt = std::fs::read_to_string(jwt_file)
                    .map_err(|e| VaultError::Config(format!("{}: {e}", jwt_file.display())))?;
                vaultrs::auth::kubernetes::login(&*client, mount, role, jwt.trim()).await
            }
        }
        .map_err(|e| VaultError::Auth(e.to_string()))?;
        client.set_token(&auth.client_token);
        tracing::info!(lease_seconds = auth.lease_duration, "logged in to Vault");
        Ok(auth.lease_duration)
    }

    /// Keeps the token alive until `stop`: renews at two thirds of its lease, logs in
    /// again when renewal fails (token at its max TTL, or revoked), and retries a login that
    /// has not succeeded yet.
    pub async fn keep_token_alive(self: Arc<Self>, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let lease = *self.lease.lock().unwrap_or_else(|e| e.into_inner());
            let wait = match lease {
                None => Duration::from_secs(2u64.pow(failures.min(5))),
                // A token whose lease is unknown (a static token): check hourly.
                Some(0) => Duration::from_secs(3600),
                Some(seconds) => Duration::from_secs((seconds * 2 / 3).max(30)),
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let renewed = match lease {
                Some(_) => self
                    .client
                    .read()
                    .await
                    .renew(None)
                    .await
                    .map(|a| a.lease_duration)
                    .ok(),
                None => None,
            };
            let next = match renewed {
                Some(seconds) => Some(seconds),
                None => match self.login().await {
                    Ok(seconds) => Some(seconds),
                    Err(e) => {
                        tracing::error!(error = %e, "Vault login failed");
                        None
                    }
                },
            };
            failures = if next.is_some() { 0 } else { failures + 1 };
            *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = next;
        }
    }

    /// The current token (for the event subscription's websocket).
    pub async fn token(&self) -> SecretString {
        SecretString::from(self.client.read().await.settings.token.clone())
    }

    /// Vault's address as configured.
    pub fn address(&self) -> &str {
        &self.config.address
    }

    /// The namespace requests for `credential` go to.
    pub fn namespace_for<'a>(&'a self, credential: &'a CredentialVault) -> Option<&'a str> {
        credential
            .namespace
            .as_deref()
            .or(self.config.namespace.as_deref())
    }

    /// `GET <mount>/static-roles/<name>`.
    ///
    /// Issued here rather than through `vaultrs::database::static_role::read`, whose response
    /// type requires `rotation_period` (absent on `rotation_schedule` roles) and drops
    /// `last_vault_rotation`; it still goes through vaultrs's configured HTTP client, so TLS,
    /// token and timeouts are the same.
    pub async fn static_role(
        &self,
        namespace: Option<&str>,
        mount: &str,
        name: &str,
    ) -> Result<StaticRole, VaultError> {
        let path = format!("{}/static-roles/{name}", mount.trim_matches('/'));
        self.get::<StaticRole>(namespace, &path)
            .await?
            .ok_or(VaultError::NotFound(path))
    }

    /// `LIST <mount>/static-roles` (as `GET …?list=true`); an empty mount lists nothing.
    pub async fn static_roles(
        &self,
        namespace: Option<&str>,
        mount: &str,
    ) -> Result<Vec<String>, VaultError> {
        #[derive(Deserialize)]
        struct Keys {
            keys: Vec<String>,
        }
        let path = format!("{}/static-roles?list=true", mount.trim_matches('/'));
        // Vault answers 404 for a mount without static roles.
        Ok(self
            .get::<Keys>(namespace, &path)
            .await?
            .map(|k| k.keys)
            .unwrap_or_default())
    }

    /// `GET /v1/<path>` with sever's token, returning `data`; `None` for 404. A refused
    /// token (revoked, or expired before its renewal) triggers one fresh login and a retry
    /// (AppRole and Kubernetes; a static token cannot be replaced this way).
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        path: &str,
    ) -> Result<Option<T>, VaultError> {
        match self.get_once(namespace, path).await {
            Err(VaultError::Auth(_)) if !matches!(self.config.auth, VaultAuth::Token { .. }) => {
                let lease = self.login().await?;
                *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
                self.get_once(namespace, path).await
            }
            other => other,
        }
    }

    async fn get_once<T: serde::de::DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        path: &str,
    ) -> Result<Option<T>, VaultError> {
        let client = self.client.read().await;
        let url = format!(
            "{}/v1/{path}",
            client.settings.address.as_str().trim_end_matches('/')
        );
        let mut request = client
            .http
            .http
            .get(&url)
            .header("X-Vault-Token", client.settings.token.as_str());
        if let Some(ns) = namespace.filter(|ns| !ns.is_empty()) {
            request = request.header("X-Vault-Namespace", ns);
        }
        let response = request.send().await.map_err(unavailable)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(unavailable)?;
        match status {
            200 => serde_json::from_slice::<Envelope<T>>(&body)
                .map(|e| Some(e.data))
                .map_err(|e| VaultError::Malformed(format!("{path}: {e}"))),
            404 => Ok(None),
            401 | 403 => Err(VaultError::Auth(format!("HTTP {status} reading {path}"))),
            _ => Err(VaultError::Unavailable(format!(
                "HTTP {status} reading {path}"
            ))),
        }
    }
}

/// `namespace/mount/role` as one string, for audit records and idempotency keys.
pub fn vault_path(namespace: Option<&str>, mount: &str, item: &str) -> String {
    let mount = mount.trim_matches('/');
    match namespace
        .map(|ns| ns.trim_matches('/'))
        .filter(|ns| !ns.is_empty())
    {
        Some(ns) => format!("{ns}/{mount}/{item}"),
        None => format!("{mount}/{item}"),
    }
}

/// Plans a Vault rotation of `credential_id`: the static role's `username` (or, for a kv
/// secret, the mapped logins) loses the sessions that began before `cutoff`.
pub fn plan(
    config: &Config,
    credential_id: &str,
    username: Option<&str>,
    cutoff: DateTime<Utc>,
    source: &str,
    vault_path: String,
) -> Result<Plan, ResolveError> {
    let credential = config
        .credentials
        .get(credential_id)
        .ok_or_else(|| ResolveError::UnknownCredential(credential_id.to_owned()))?;
    let vault = credential.vault.as_ref().ok_or_else(|| {
        ResolveError::Invalid(format!(
            "credential {credential_id:?} is not a Vault secret"
        ))
    })?;
    let mappings: Vec<(String, String)> = match (
        username,
        credential.logins.is_empty(),
        &vault.target,
    ) {
        (Some(user), true, Some(target)) => vec![(target.clone(), user.to_owned())],
        (Some(user), false, _) => {
            let mapped: Vec<(String, String)> = credential
                .logins
                .iter()
                .filter(|m| m.login == user)
                .map(|m| (m.target.clone(), m.login.clone()))
                .collect();
            if mapped.is_empty() {
                return Err(ResolveError::Invalid(format!(
                    "the static role's username {user:?} is not mapped to credential {credential_id:?}"
                )));
            }
            mapped
        }
        (None, false, _) => credential
            .logins
            .iter()
            .map(|m| (m.target.clone(), m.login.clone()))
            .collect(),
        _ => {
            return Err(ResolveError::Invalid(format!(
                "credential {credential_id:?} maps no logins"
            )));
        }
    };
    for (target, login) in &mappings {
        if config.protected_on(target).contains(login) {
            return Err(ResolveError::ProtectedLogin {
                login: login.clone(),
                target: target.clone(),
            });
        }
    }
    let scope = match credential.policy {
        RotationPolicy::TerminateBeforeCutoff => Some(Scope::Before(cutoff)),
        RotationPolicy::TerminateAll => Some(Scope::All),
        RotationPolicy::None => None,
    };
    Ok(Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Vault {
            credential: Some(credential_id.to_owned()),
            vault_path,
            source: source.to_owned(),
            policy: credential.policy,
        },
        scope,
        dry_run: false,
        reason: None,
        cutoff_defaulted: false,
        steps: steps_for(config, mappings)?,
    })
}

/// Plans the rotation of a static role found through a watched mount: its `username` on the
/// mount's target loses the sessions that began before `cutoff`.
pub fn plan_for_mount(
    config: &Config,
    target: &str,
    username: &str,
    cutoff: DateTime<Utc>,
    source: &str,
    vault_path: String,
) -> Result<Plan, ResolveError> {
    if !config.targets.contains_key(target) {
        return Err(ResolveError::UnknownTarget(target.to_owned()));
    }
    if config.protected_on(target).contains(username) {
        return Err(ResolveError::ProtectedLogin {
            login: username.to_owned(),
            target: target.to_owned(),
        });
    }
    Ok(Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Vault {
            credential: None,
            vault_path,
            source: source.to_owned(),
            policy: RotationPolicy::TerminateBeforeCutoff,
        },
        scope: Some(Scope::Before(cutoff)),
        dry_run: false,
        reason: None,
        cutoff_defaulted: false,
        steps: steps_for(config, [(target.to_owned(), username.to_owned())])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_roles_parse_with_a_period_or_a_schedule() {
        let period: Envelope<StaticRole> = serde_json::from_str(
            r#"{"request_id":"x","data":{"credential_type":"password","db_name":"pg","last_vault_rotation":"2026-11-24T10:00:00.123456789Z","rotation_period":3600,"rotation_statements":[],"ttl":5,"username":"app"}}"#,
        )
        .unwrap();
        assert_eq!(period.data.rotation_period, Some(3600));
        assert_eq!(
            period.data.last_vault_rotation.timestamp_subsec_nanos(),
            123_456_789
        );
        let schedule: Envelope<StaticRole> = serde_json::from_str(
            r#"{"data":{"db_name":"pg","last_vault_rotation":"2026-11-24T10:00:00-07:00","rotation_schedule":"0 * * * SAT","rotation_window":3600,"username":"app"}}"#,
        )
        .unwrap();
        assert_eq!(
            schedule.data.rotation_schedule.as_deref(),
            Some("0 * * * SAT")
        );
        assert_eq!(
            schedule.data.last_vault_rotation.to_rfc3339(),
            "2026-11-24T17:00:00+00:00"
        );
    }

    #[test]
    fn vault_paths_name_namespace_mount_and_item() {
        assert_eq!(vault_path(None, "database/", "orders"), "database/orders");
        assert_eq!(
            vault_path(Some("admin/team/"), "database", "orders"),
            "admin/team/database/orders"
        );
        assert_eq!(
            vault_path(Some(""), "database", "orders"),
            "database/orders"
        );
    }
}
