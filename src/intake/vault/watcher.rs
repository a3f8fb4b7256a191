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
use crate::intake::{Accepted, AppState, RequestMeta};
use crate::resolve::vault::vault_path;

const ACTOR: &str = "vault:watcher";

/// Polls every `interval` until `stop`.
pub async fn run(state: AppState, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => check(&state).await,
        }
    }
}

/// One pass over every credential that is a Vault static role.
pub async fn check(state: &AppState) {
    let Some(vault) = &state.vault else { return };
    let config = &state.ctx.config;
    for (id, credential) in &config.credentials {
        let Some(cv) = credential.vault.as_ref() else {
            continue;
        };
        let Some(role) = cv.role.as_deref() else {
            continue;
        };
        let namespace = vault.namespace_for(cv);
        let path = vault_path(namespace, &cv.mount, role);
        let static_role = match vault.static_role(namespace, &cv.mount, role).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(credential = %id, %path, error = %e, "watcher could not read the static role");
                continue;
            }
        };
        let key = format!("vault-watch:{path}");
        let seen = static_role
            .last_vault_rotation
            .to_rfc3339_opts(SecondsFormat::Nanos, true);
        match state.ctx.store.mark(&key).await {
            Ok(Some(mark)) if mark == seen => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "watcher cannot read its marks");
                return;
            }
        }
        let meta = RequestMeta {
            remote: "vault".into(),
            method: "GET".into(),
            path: format!("/v1/{}/static-roles/{role}", cv.mount.trim_matches('/')),
            webhook_id: None,
        };
        let detail = json!({"watched": path, "remote_addr": "vault"});
        let namespace = namespace.map(str::to_owned);
        let accepted = static_role_rotated(
            state,
            &meta,
            ACTOR,
            "watcher",
            id,
            cv,
            namespace.as_deref(),
            static_role,
            Utc::now(),
            Vec::new(),
            detail,
        )
        .await;
        match accepted {
            Ok(Accepted::Started(action_id, _)) => {
                tracing::info!(credential = %id, %path, %action_id, "watcher saw a rotation");
            }
            Ok(Accepted::Duplicate(_)) => {}
            Err(e) => {
                // Already audited; the mark stays, so the next pass tries again.
                tracing::warn!(credential = %id, %path, error = %e, "watcher could not act on a rotation");
                continue;
            }
        }
        if let Err(e) = state.ctx.store.set_mark(&key, &seen, Utc::now()).await {
            tracing::warn!(error = %e, "watcher cannot record its mark");
        }
    }
}
