//! The Vault client: logging in (token, AppRole, Kubernetes), the reads sever makes (static
//! roles, kv-v2 metadata, its own token) and what it knows of Vault's health for `/readyz`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;
use tokio::time::Instant;
use vaultrs::client::{Client as _, Identity, VaultClient, VaultClientSettingsBuilder};

use super::token::TokenLease;
use super::{StaticRole, VaultError, transport};
use crate::config::{CredentialVault, VaultAuth, VaultConfig};
use crate::telemetry::VaultToken;

/// Vault's answer to a read, told apart the ways sever needs.
enum Read<T> {
    Found(T),
    /// 404 on a mount that exists: no such item (or an empty list).
    Missing,
    /// 404 "no handler for route": the mount itself does not exist.
    NoMount,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Deserialize, Default)]
struct Errors {
    #[serde(default)]
    errors: Vec<String>,
}

/// The current version of a kv-v2 secret, as its metadata gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvVersion {
    /// `current_version`.
    pub version: u64,
    /// When that version was written: the exact cutoff for its rotation.
    pub created_time: DateTime<Utc>,
}

/// A logged-in Vault client that renews or re-acquires its token in the background.
pub struct Vault {
    pub(super) client: RwLock<VaultClient>,
    pub(super) config: VaultConfig,
    /// The current token's lease; `None` until a login worked.
    lease: Mutex<Option<TokenLease>>,
    /// Configured paths Vault says do not exist (path → problem), for `/readyz`.
    missing: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("address", &self.config.address)
            .finish()
    }
}

fn unavailable(e: &(dyn std::error::Error + 'static)) -> VaultError {
    VaultError::Unavailable(transport::describe(e))
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
            lease: Mutex::new(None),
            missing: Mutex::default(),
        });
        // Vault being down must not keep sever from starting: keep_token_alive retries.
        if let Err(e) = vault.login().await {
            tracing::error!(error = %e, "Vault login failed; retrying in the background");
        }
        Ok(vault)
    }

    /// `method = "token"`: the token is read from its source, not obtained by a login.
    pub(super) fn reads_token(&self) -> bool {
        matches!(self.config.auth, VaultAuth::Token { .. })
    }

    pub(super) fn lease(&self) -> Option<TokenLease> {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set_lease(&self, lease: Option<TokenLease>) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = lease;
        let token = match lease.map(|l| l.expires_at) {
            None => VaultToken::Missing,
            Some(None) => VaultToken::Unlimited,
            Some(Some(at)) => VaultToken::ExpiresIn(at.saturating_duration_since(Instant::now())),
        };
        crate::telemetry::vault_token(token);
    }

    /// A digest of the current token, to tell whether a re-read changed it without keeping
    /// a second copy of the secret.
    pub(super) async fn token_fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.client.read().await.settings.token.as_bytes()).into()
    }

    /// Logs in with the configured method (for `method = "token"`: reads the token again and
    /// looks it up) and records the new token's lease.
    pub(super) async fn login(&self) -> Result<(), VaultError> {
        let lease = match &self.config.auth {
            VaultAuth::Token { token } => {
                let token = token.load("vault.auth.token")?;
                self.client
                    .write()
                    .await
                    .set_token(token.expose_secret().trim());
                self.lookup_self().await?
            }
            VaultAuth::Approle {
                role_id,
                secret_id,
                mount,
            } => {
                let secret_id = secret_id.load("vault.auth.secret_id")?;
                let client = self.client.read().await;
                let auth = vaultrs::auth::approle::login(
                    &*client,
                    mount,
                    role_id,
                    secret_id.expose_secret(),
                )
                .await
                .map_err(login_error)?;
                drop(client);
                self.accept_login(auth).await
            }
            VaultAuth::Kubernetes {
                role,
                jwt_file,
                mount,
            } => {
                let jwt = std::fs::read_to_string(jwt_file)
                    .map_err(|e| VaultError::Config(format!("{}: {e}", jwt_file.display())))?;
                let client = self.client.read().await;
                let auth = vaultrs::auth::kubernetes::login(&*client, mount, role, jwt.trim())
                    .await
                    .map_err(login_error)?;
                drop(client);
                self.accept_login(auth).await
            }
        };
        if self.reads_token() {
            // Read again at every refresh: not news.
            tracing::debug!(ttl = ?lease.ttl, renewable = lease.renewable, "read the Vault token");
        } else {
            tracing::info!(ttl = ?lease.ttl, renewable = lease.renewable, "logged in to Vault");
        }
        self.set_lease(Some(lease));
        Ok(())
    }

    async fn accept_login(&self, auth: vaultrs::api::AuthInfo) -> TokenLease {
        self.client.write().await.set_token(&auth.client_token);
        TokenLease::issued(
            Instant::now(),
            Duration::from_secs(auth.lease_duration),
            auth.renewable,
        )
    }

    /// `auth/token/renew-self`: extends the current token and records how far.
    pub(super) async fn renew(&self) -> Result<(), VaultError> {
        let auth = self
            .client
            .read()
            .await
            .renew(None)
            .await
            .map_err(login_error)?;
        let previous = self
            .lease()
            .unwrap_or_else(|| TokenLease::issued(Instant::now(), Duration::ZERO, true));
        let lease = previous.renewed(
            Instant::now(),
            Duration::from_secs(auth.lease_duration),
            auth.renewable,
        );
        if lease.capped {
            tracing::info!(
                ttl_seconds = auth.lease_duration,
                "Vault token reached its maximum TTL; logging in again before it expires"
            );
        }
        self.set_lease(Some(lease));
        Ok(())
    }

    /// `auth/token/lookup-self`: the current token's remaining TTL and renewability (no
    /// login on refusal: this is what a login and the readiness probe check).
    async fn lookup_self(&self) -> Result<TokenLease, VaultError> {
        #[derive(Deserialize)]
        struct Lookup {
            #[serde(default)]
            ttl: u64,
            #[serde(default)]
            renewable: bool,
        }
        let namespace = self.config.namespace.clone();
        match self
            .read_once::<Lookup>(namespace.as_deref(), "auth/token/lookup-self")
            .await?
        {
            Read::Found(l) => Ok(TokenLease::issued(
                Instant::now(),
                Duration::from_secs(l.ttl),
                l.renewable,
            )),
            Read::Missing | Read::NoMount => Err(VaultError::Malformed(
                "auth/token/lookup-self answered 404".into(),
            )),
        }
    }

    /// Whether Vault can be reached now and takes sever's token (or a fresh login when it
    /// refuses the current one), plus every configured path it says does not exist: `Err`
    /// says what is wrong, for `/readyz`.
    pub async fn probe(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let checked = match self.lookup_self().await {
            // As for a refused read: a fresh login (or a rewritten token file) may replace
            // the token, and only if that fails too is sever unable to work with Vault.
            Err(VaultError::Auth(_)) => self.login().await,
            other => other.map(drop),
        };
        if let Err(e) = checked {
            problems.push(match e {
                VaultError::Auth(why) => format!("Vault refuses sever's token: {why}"),
                other => other.to_string(),
            });
        }
        problems.extend(
            self.missing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned(),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Records whether configured `path` exists (`problem` is `None` when it does).
    pub fn record_path(&self, path: &str, problem: Option<String>) {
        let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        match problem {
            Some(p) => {
                missing.insert(path.to_owned(), p);
            }
            None => {
                missing.remove(path);
            }
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
        let mount = mount.trim_matches('/');
        let path = format!("{mount}/static-roles/{name}");
        match self.read::<StaticRole>(namespace, &path).await? {
            Read::Found(role) => Ok(role),
            Read::Missing => Err(VaultError::NotFound(format!(
                "static role {name:?} does not exist on mount {mount:?}"
            ))),
            Read::NoMount => Err(no_mount(namespace, mount)),
        }
    }

    /// `LIST <mount>/static-roles` (as `GET …?list=true`): an existing mount without static
    /// roles lists nothing; a mount that does not exist is an error.
    pub async fn static_roles(
        &self,
        namespace: Option<&str>,
        mount: &str,
    ) -> Result<Vec<String>, VaultError> {
        #[derive(Deserialize)]
        struct Keys {
            keys: Vec<String>,
        }
        let mount = mount.trim_matches('/');
        let path = format!("{mount}/static-roles?list=true");
        match self.read::<Keys>(namespace, &path).await? {
            Read::Found(k) => Ok(k.keys),
            Read::Missing => Ok(Vec::new()),
            Read::NoMount => Err(no_mount(namespace, mount)),
        }
    }

    /// `GET <mount>/metadata/<path>` of a kv-v2 secret: its current version and when that was
    /// written. Never reads the secret's data.
    pub async fn kv_version(
        &self,
        namespace: Option<&str>,
        mount: &str,
        path: &str,
    ) -> Result<KvVersion, VaultError> {
        #[derive(Deserialize)]
        struct Version {
            created_time: DateTime<Utc>,
        }
        #[derive(Deserialize)]
        struct Metadata {
            current_version: u64,
            versions: BTreeMap<String, Version>,
        }
        let mount = mount.trim_matches('/');
        let path = path.trim_matches('/');
        let full = format!("{mount}/metadata/{path}");
        let metadata = match self.read::<Metadata>(namespace, &full).await? {
            Read::Found(m) => m,
            Read::Missing => {
                return Err(VaultError::NotFound(format!(
                    "kv secret {path:?} does not exist on mount {mount:?}"
                )));
            }
            Read::NoMount => return Err(no_mount(namespace, mount)),
        };
        let current = metadata
            .versions
            .get(&metadata.current_version.to_string())
            .ok_or_else(|| {
                VaultError::Malformed(format!("{full}: current_version is not among versions"))
            })?;
        Ok(KvVersion {
            version: metadata.current_version,
            created_time: current.created_time,
        })
    }

    /// `GET /v1/<path>` with sever's token. A refused token (revoked, expired, or a token
    /// file rewritten by an agent) triggers one fresh login and a retry.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        path: &str,
    ) -> Result<Read<T>, VaultError> {
        match self.read_once(namespace, path).await {
            Err(VaultError::Auth(_)) => {
                self.login().await?;
                self.read_once(namespace, path).await
            }
            other => other,
        }
    }

    async fn read_once<T: serde::de::DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        path: &str,
    ) -> Result<Read<T>, VaultError> {
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
        let response = request.send().await.map_err(|e| unavailable(&e))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| unavailable(&e))?;
        let route = || path.split('?').next().unwrap_or(path);
        match status {
            200 => serde_json::from_slice::<Envelope<T>>(&body)
                .map(|e| Read::Found(e.data))
                .map_err(|e| VaultError::Malformed(format!("{}: {e}", route()))),
            404 => {
                let errors: Errors = serde_json::from_slice(&body).unwrap_or_default();
                if errors
                    .errors
                    .iter()
                    .any(|e| e.contains("no handler for route"))
                {
                    Ok(Read::NoMount)
                } else {
                    Ok(Read::Missing)
                }
            }
            401 | 403 => Err(VaultError::Auth(format!(
                "HTTP {status} reading {}",
                route()
            ))),
            _ => Err(VaultError::Unavailable(format!(
                "HTTP {status} reading {}",
                route()
            ))),
        }
    }
}

fn no_mount(namespace: Option<&str>, mount: &str) -> VaultError {
    let place = namespace
        .filter(|ns| !ns.is_empty())
        .map(|ns| format!(" in namespace {ns:?}"))
        .unwrap_or_default();
    VaultError::NotFound(format!("mount {mount:?} does not exist{place}"))
}

/// A login or renewal error: Vault's refusal, or the transport's failure named.
fn login_error(e: vaultrs::error::ClientError) -> VaultError {
    use vaultrs::error::ClientError;
    match &e {
        ClientError::APIError { code, errors } => {
            let why = format!("HTTP {code}: {}", errors.join("; "));
            if matches!(code, 400 | 401 | 403) {
                VaultError::Auth(why)
            } else {
                VaultError::Unavailable(why)
            }
        }
        _ => unavailable(&e),
    }
}
