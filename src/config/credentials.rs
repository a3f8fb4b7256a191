//! `[credentials.<id>]`: the credentials that rotate, the logins they reach, their rotation
//! policy and their AWS secret or Vault role. Uses `config`'s own types and name rules.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::names::{self, NameKind};
use super::{Config, ConfigError, check_id, invalid};
use crate::select::{Ending, Mode};

/// What a rotation of a credential does to the sessions of its logins.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
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
    /// How a `rotated` event ends the sessions: `terminate` (the default) or `graceful`,
    /// which lets a running statement and an open transaction finish within `grace` (at most
    /// 5 minutes). `cancel` is refused: it would leave the old credential's session
    /// connected. A `revoked` event always terminates at once.
    #[serde(default)]
    pub mode: Mode,
    /// How long `graceful` waits, e.g. `30s`.
    #[serde(default, with = "humantime_serde::option")]
    pub grace: Option<Duration>,
    /// Announce a `rotated` event's termination this long ahead, and act only then (a
    /// `revoked` event never waits). Unset: act at once.
    #[serde(default, with = "humantime_serde::option")]
    pub notify_before: Option<Duration>,
    /// Act on a `rotated` event only when this `[[windows]]` window is open.
    #[serde(default)]
    pub window: Option<String>,
    /// How long a rotation waits for `window` (default 7d); then it expires, recorded and
    /// announced.
    #[serde(default, with = "humantime_serde::option")]
    pub max_wait: Option<Duration>,
    /// Act only if the announcement was delivered by then.
    #[serde(default)]
    pub require_announcement: bool,
    /// A rotation of this credential lifts the login locks on its logins that began before
    /// the rotation. Off by default: otherwise one signed event could lift an incident lock.
    #[serde(default)]
    pub lift_locks: bool,
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
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PreviousUserPolicy {
    /// Leave the previous user's sessions alone (AWS's intent).
    #[default]
    Keep,
    /// Also terminate the previous user's sessions that began before the cutoff.
    Terminate,
}

/// The longest grace a credential may give: its old secret stays in use that long.
pub const MAX_CREDENTIAL_GRACE: Duration = Duration::from_secs(5 * 60);

impl CredentialConfig {
    /// When a `rotated` event acts and is announced, as configured.
    pub fn schedule(&self) -> super::ScheduleRequest {
        super::ScheduleRequest {
            notify_before: self.notify_before,
            not_before: None,
            window: self.window.clone(),
            max_wait: self.max_wait,
            require_announcement: self.require_announcement,
        }
    }

    /// How a `rotated` event ends this credential's sessions.
    pub fn ending(&self) -> Ending {
        Ending {
            mode: self.mode,
            grace: self.grace,
        }
    }
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

/// Checks each credential against the targets, the `[vault]` section and the other
/// credentials: ids, derived logins, the Vault or AWS secret, and each login mapping.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    for (id, credential) in &config.credentials {
        let path = format!("credentials.{id}");
        check_id(id).map_err(|r| invalid(path.clone(), r))?;
        let derives_logins = credential.aws.is_some()
            || credential
                .vault
                .as_ref()
                .is_some_and(|v| v.role.is_some() && v.target.is_some());
        if credential.mode == Mode::Cancel {
            return Err(invalid(
                format!("{path}.mode"),
                "cancel would leave a session holding the old credential connected; use \
                 terminate or graceful",
            ));
        }
        credential
            .ending()
            .validate(MAX_CREDENTIAL_GRACE)
            .map_err(|e| invalid(format!("{path}.{}", e.field), &e.problem))?;
        if let Some(window) = &credential.window
            && config.window(window).is_none()
        {
            return Err(invalid(
                format!("{path}.window"),
                &format!("no [[windows]] is named {window:?}"),
            ));
        }
        if credential.require_announcement && credential.notify_before.is_none() {
            return Err(invalid(
                format!("{path}.require_announcement"),
                "needs notify_before",
            ));
        }
        let announced = config
            .notify
            .channels
            .iter()
            .any(|c| c.events.contains(&super::NotifyEvent::AnnouncementMade));
        if credential.require_announcement && !announced {
            return Err(invalid(
                format!("{path}.require_announcement"),
                "no [[notify.channels]] takes announcement.made, so it could never be \
                 delivered",
            ));
        }
        if credential.logins.is_empty() && !derives_logins {
            return Err(invalid(
                format!("{path}.logins"),
                "must name at least one login (or take it from credentials.<id>.aws, or from \
                 credentials.<id>.vault with a role and a target)",
            ));
        }
        if let Some(vault) = &credential.vault {
            if config.vault.is_none() {
                return Err(invalid(format!("{path}.vault"), "needs a [vault] section"));
            }
            if vault.role.is_some() == vault.kv_path.is_some() {
                return Err(invalid(
                    format!("{path}.vault"),
                    "set exactly one of role (database static role) or kv_path (kv-v2 secret)",
                ));
            }
            if let Some(target) = &vault.target
                && !config.targets.contains_key(target)
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
                && !config.targets.contains_key(target)
            {
                return Err(invalid(
                    format!("{path}.aws.target"),
                    &format!("no target named {target:?}"),
                ));
            }
            let twin = config.credentials.iter().find(|(other, c)| {
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
            if !config.targets.contains_key(&mapping.target) {
                return Err(invalid(
                    format!("{at}.target"),
                    &format!("no target named {:?}", mapping.target),
                ));
            }
            let engine = config.targets[&mapping.target].engine;
            names::check_on(NameKind::Login, &mapping.login, &mapping.target, engine)
                .map_err(|e| invalid(format!("{at}.login"), &e.to_string()))?;
            if config
                .protected_on(&mapping.target)
                .contains(&mapping.login)
            {
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
    Ok(())
}
