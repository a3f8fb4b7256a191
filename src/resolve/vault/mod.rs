//! HashiCorp Vault and OpenBao: the [`Vault`] client (logging in and staying logged in,
//! reading static roles and kv-v2 metadata), whose static role or kv secret a rotation is
//! ([`owner_of`], [`kv_owner`]), and planning what it ends. Uses `config`, `terminate` (the
//! scope) and the resolve rules.

mod client;
mod token;
mod transport;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

pub use client::{KvVersion, Vault};

use super::{Origin, Plan, ResolveError, cutoff, steps_for};
use crate::config::{Config, ConfigError, CredentialVault, RotationPolicy, WatchedMount};
use crate::select::Ending;

/// Vault could not be asked, or answered unusably.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    /// Network, TLS (with its cause named), timeouts, 5xx.
    #[error("Vault unavailable: {0}")]
    Unavailable(String),
    /// Login or token refused.
    #[error("Vault refused sever's credentials: {0}")]
    Auth(String),
    /// No such static role, kv secret or mount.
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

/// A Vault path segment without slashes at either end; `None` when nothing is left.
pub fn trimmed(s: &str) -> Option<String> {
    Some(s.trim_matches('/').to_owned()).filter(|s| !s.is_empty())
}

/// Same namespace, treating empty and absent alike.
fn same_namespace(a: Option<&str>, b: Option<&str>) -> bool {
    a.and_then(trimmed) == b.and_then(trimmed)
}

/// Whose static role it is: a configured credential, or a watched mount.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// `credentials.<id>.vault`.
    Credential(&'a str, &'a CredentialVault),
    /// `vault.watcher.mounts[]`.
    Mount(&'a WatchedMount),
}

impl Owner<'_> {
    /// The mount the static role is on.
    pub fn mount(&self) -> &str {
        match self {
            Owner::Credential(_, cv) => &cv.mount,
            Owner::Mount(m) => &m.mount,
        }
    }
}

/// The owner of static role `role` on `mount` in `namespace`: a credential first, else a
/// watched mount.
pub fn owner_of<'a>(
    config: &'a Config,
    mount: &str,
    role: &str,
    namespace: Option<&str>,
) -> Option<(Owner<'a>, Option<String>)> {
    let default_ns = config.vault.as_ref().and_then(|v| v.namespace.clone());
    let credential = config.credentials.iter().find_map(|(id, c)| {
        let v = c.vault.as_ref()?;
        let ns = v.namespace.clone().or(default_ns.clone());
        let matches = v.role.as_deref() == Some(role)
            && v.mount.trim_matches('/') == mount.trim_matches('/')
            && same_namespace(ns.as_deref(), namespace);
        matches.then_some((Owner::Credential(id.as_str(), v), ns))
    });
    credential.or_else(|| {
        let watcher = config.vault.as_ref()?.watcher.as_ref()?;
        watcher.mounts.iter().find_map(|m| {
            let ns = m.namespace.clone().or(default_ns.clone());
            let matches = m.mount.trim_matches('/') == mount.trim_matches('/')
                && same_namespace(ns.as_deref(), namespace);
            matches.then_some((Owner::Mount(m), ns))
        })
    })
}

/// The credential that is kv-v2 secret `inner` on `mount_path` (without slashes) in
/// `namespace`, with the credential's namespace (its own, else `vault.namespace`).
pub fn kv_owner<'a>(
    config: &'a Config,
    mount_path: &str,
    inner: &str,
    namespace: Option<&str>,
) -> Option<(&'a str, &'a CredentialVault, Option<String>)> {
    let default_ns = config.vault.as_ref().and_then(|v| v.namespace.as_deref());
    let credential_ns = |c: &CredentialVault| c.namespace.clone().or(default_ns.map(str::to_owned));
    let found = config.credentials.iter().find_map(|(id, c)| {
        let v = c.vault.as_ref()?;
        let matches = v.kv_path.as_deref().map(|p| p.trim_matches('/')) == Some(inner)
            && v.mount.trim_matches('/') == mount_path
            && same_namespace(credential_ns(v).as_deref(), namespace);
        matches.then_some((id.as_str(), v))
    });
    found.map(|(id, cv)| (id, cv, credential_ns(cv)))
}

/// Plans the rotation of a static role whose user is `username`: by its credential's
/// mappings and policy ([`plan`]), or on its watched mount's target ([`plan_for_mount`]).
pub fn plan_for_owner(
    config: &Config,
    owner: Owner<'_>,
    username: &str,
    cutoff: DateTime<Utc>,
    source: &str,
    vault_path: String,
) -> Result<Plan, ResolveError> {
    match owner {
        Owner::Credential(id, _) => plan(config, id, Some(username), cutoff, source, vault_path),
        Owner::Mount(m) => plan_for_mount(config, &m.target, username, cutoff, source, vault_path),
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
    let scope = cutoff::scope(credential.policy, cutoff);
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
        ending: credential.ending(),
        selection: None,
        schedule: super::schedule::schedule(config, &credential.schedule(), chrono::Utc::now())?,
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
    // A watched mount has no credential, so no policy of its own: the default one.
    let policy = RotationPolicy::TerminateBeforeCutoff;
    Ok(Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Vault {
            credential: None,
            vault_path,
            source: source.to_owned(),
            policy,
        },
        scope: cutoff::scope(policy, cutoff),
        dry_run: false,
        reason: None,
        cutoff_defaulted: false,
        ending: Ending::TERMINATE,
        selection: None,
        schedule: None,
        steps: steps_for(config, [(target.to_owned(), username.to_owned())])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Envelope<T> {
        data: T,
    }

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
    fn namespaces_compare_without_slashes() {
        assert!(same_namespace(Some("admin/"), Some("admin")));
        assert!(same_namespace(None, Some("")));
        assert!(!same_namespace(Some("admin"), None));
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
