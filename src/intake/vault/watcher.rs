//! Every edition: poll each configured static role and treat an advanced
//! `last_vault_rotation` as a rotation. The last value seen is kept in the store, so a
//! restart neither misses a rotation (it is still newer than the mark) nor repeats one; an
//! event for the same rotation derives the same idempotency key, so it is done once.
//!
//! A role seen for the first time counts as rotated at its `last_vault_rotation`: sessions
//! older than that hold a password Vault has already replaced.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::static_role_rotated;
use crate::config::{Config, CredentialVault};
use crate::http::error::ApiError;
use crate::http::{Actor, RequestMeta};
use crate::intake::{Accepted, Arrival, Intake};
use crate::resolve::vault::{Owner, owner_of};
use crate::resolve::vault::{Vault, VaultError, vault_path};

const ACTOR: Actor = Actor::VaultWatcher;

/// Polls every `interval` until `stop`.
pub async fn run(state: Intake, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => check(&state).await,
        }
    }
}

/// Without a watcher: checks that every configured static role exists, so a mistyped role
/// shows in the log and in `/readyz` at start rather than at the first rotation. Until every
/// role reads back it checks again every few seconds: Vault may be down at start, and a
/// role created (or a policy fixed) later must clear `/readyz` without a restart.
pub async fn verify_at_start(state: Intake, stop: CancellationToken) {
    let Some(vault) = state.vault.clone() else {
        return;
    };
    // Logged at error level once per path and problem, not every few seconds.
    let mut logged = std::collections::BTreeSet::new();
    loop {
        let mut all_found = true;
        for (id, cv, role, namespace) in credential_roles(&state.ctx.config, &vault) {
            let path = vault_path(namespace, &cv.mount, role);
            let result = vault.static_role(namespace, &cv.mount, role).await;
            all_found &= result.is_ok();
            if let Some(problem) = credential_problem(&vault, id, &path, result.err())
                && logged.insert(problem.clone())
            {
                tracing::error!(%path, %problem, "a configured Vault static role cannot be read");
            }
        }
        if all_found {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Every credential that is a Vault static role: its id, settings, role and namespace.
fn credential_roles<'a>(
    config: &'a Config,
    vault: &'a Vault,
) -> impl Iterator<Item = (&'a str, &'a CredentialVault, &'a str, Option<&'a str>)> {
    config
        .credentials
        .iter()
        .filter_map(move |(id, credential)| {
            let cv = credential.vault.as_ref()?;
            let role = cv.role.as_deref()?;
            Some((id.as_str(), cv, role, vault.namespace_for(cv)))
        })
}

/// Records in `/readyz` what reading credential `id`'s static role at `path` showed: `None`
/// clears it; a missing role or mount, or a refusal on this path, is the credential's
/// problem (returned, for the log). Vault being unreachable is not: the probe reports that.
fn credential_problem(
    vault: &Vault,
    id: &str,
    path: &str,
    error: Option<VaultError>,
) -> Option<String> {
    let problem = match error {
        None => None,
        Some(e @ VaultError::NotFound(_)) => Some(format!("credential {id:?}: {e}")),
        Some(e @ VaultError::Auth(_)) => Some(format!("credential {id:?}: {}", denied(path, &e))),
        Some(_) => return None,
    };
    vault.record_path(path, problem.clone());
    problem
}

/// A path sever's token may not read. With a least-privilege policy (the shipped one names
/// its mounts), a mistyped mount is refused with 403 before Vault looks for it, so this is
/// as likely a typo as a policy gap.
fn denied(path: &str, e: &VaultError) -> String {
    format!("{path}: {e} (a mistyped mount or role, or sever's policy does not grant this path)")
}

/// One pass over every credential that is a Vault static role, then over every static role
/// of the watched mounts that no credential claims.
pub async fn check(state: &Intake) {
    let Some(vault) = &state.vault else { return };
    let config = &state.ctx.config;
    let mut watched: Vec<(String, Option<String>, Owner<'_>)> = credential_roles(config, vault)
        .map(|(id, cv, role, namespace)| {
            (
                role.to_owned(),
                namespace.map(str::to_owned),
                Owner::Credential(id, cv),
            )
        })
        .collect();
    let mounts = config
        .vault
        .as_ref()
        .and_then(|v| v.watcher.as_ref())
        .map(|w| w.mounts.as_slice())
        .unwrap_or_default();
    for m in mounts {
        let namespace = m
            .namespace
            .clone()
            .or_else(|| config.vault.as_ref().and_then(|v| v.namespace.clone()));
        let key = vault_path(namespace.as_deref(), &m.mount, "");
        let roles = match vault.static_roles(namespace.as_deref(), &m.mount).await {
            Ok(roles) => {
                vault.record_path(&key, None);
                roles
            }
            Err(e @ VaultError::NotFound(_)) => {
                let problem = format!("watched mount: {e}");
                tracing::error!(mount = %m.mount, error = %e, "a watched Vault mount does not exist");
                vault.record_path(&key, Some(problem));
                continue;
            }
            Err(e @ VaultError::Auth(_)) => {
                let problem = format!("watched mount: {}", denied(&key, &e));
                tracing::error!(mount = %m.mount, error = %e, "sever may not list a watched Vault mount");
                vault.record_path(&key, Some(problem));
                continue;
            }
            Err(e) => {
                tracing::warn!(mount = %m.mount, error = %e, "watcher could not list static roles");
                continue;
            }
        };
        for role in roles {
            // A role a credential claims is watched as that credential.
            if let Some((Owner::Mount(_), _)) =
                owner_of(config, &m.mount, &role, namespace.as_deref())
            {
                watched.push((role, namespace.clone(), Owner::Mount(m)));
            }
        }
    }
    for (role, namespace, owner) in watched {
        watch_one(state, vault, &role, namespace.as_deref(), owner).await;
    }
}

async fn watch_one(
    state: &Intake,
    vault: &Vault,
    role: &str,
    namespace: Option<&str>,
    owner: Owner<'_>,
) {
    let mount = match owner {
        Owner::Credential(_, cv) => cv.mount.as_str(),
        Owner::Mount(m) => m.mount.as_str(),
    };
    let path = vault_path(namespace, mount, role);
    let static_role = match vault.static_role(namespace, mount, role).await {
        Ok(r) => {
            vault.record_path(&path, None);
            r
        }
        Err(e) => {
            // A configured role that does not exist (or may not be read) is an error; one
            // listed on a watched mount a moment ago was just deleted, which is not.
            let problem = match owner {
                Owner::Credential(id, _) => credential_problem(vault, id, &path, Some(e.clone())),
                Owner::Mount(_) => None,
            };
            if problem.is_some() {
                tracing::error!(%path, error = %e, "a configured Vault static role cannot be read");
            } else {
                tracing::warn!(%path, error = %e, "watcher could not read the static role");
            }
            return;
        }
    };
    let key = format!("vault-watch:{path}");
    let seen = static_role
        .last_vault_rotation
        .to_rfc3339_opts(SecondsFormat::Nanos, true);
    match state.ctx.store.mark(&key).await {
        Ok(Some(mark)) if mark == seen => return,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "watcher cannot read its marks");
            return;
        }
    }
    let meta = RequestMeta::from_vault(
        "GET",
        format!("/v1/{}/static-roles/{role}", mount.trim_matches('/')),
    );
    let arrival = Arrival {
        actor: ACTOR,
        received_at: Utc::now(),
        claims: Vec::new(),
        detail: json!({"watched": path, "remote_addr": "vault"}),
    };
    let accepted = static_role_rotated(
        state,
        arrival,
        "watcher",
        owner,
        role,
        namespace,
        static_role,
    )
    .await;
    if let Err(e) = &accepted {
        state.refused(&meta, &ACTOR, e).await;
    }
    match accepted {
        Ok(Accepted::Started(action_id) | Accepted::Scheduled(action_id, _)) => {
            tracing::info!(%path, %action_id, "watcher saw a rotation");
        }
        Ok(Accepted::Duplicate(_)) => {}
        // Refused for good (a protected or unmapped login): audited once, not every pass.
        Err(ApiError::Resolve(e)) => {
            tracing::warn!(%path, error = %e, "watcher refused a rotation");
        }
        Err(e) => {
            // Transient (store, audit): the mark stays, so the next pass tries again.
            tracing::warn!(%path, error = %e, "watcher could not act on a rotation");
            return;
        }
    }
    if let Err(e) = state.ctx.store.set_mark(&key, &seen, Utc::now()).await {
        tracing::warn!(error = %e, "watcher cannot record its mark");
    }
}
