//! HashiCorp Vault and OpenBao: the [`Vault`] client (logging in and staying logged in,
//! reading static roles and kv-v2 metadata) and planning what a Vault rotation ends.

mod client;
mod token;
mod transport;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

pub use client::{KvVersion, Vault};

use super::{Origin, Plan, ResolveError, steps_for};
use crate::config::{Config, ConfigError, RotationPolicy};
use crate::terminate::Scope;

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
