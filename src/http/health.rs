//! `GET /healthz` (the process is up) and `GET /readyz` (each component's own state).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::context::Context;
use crate::resolve::vault::Vault;
use crate::store::StoreError;

/// Upper bound for each readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the probes read: the shared context, the Vault client and the subscriber's streams.
#[derive(Clone)]
pub struct Health {
    /// Store, audit trail, targets and config.
    pub ctx: Arc<Context>,
    /// The Vault client, when Vault is configured.
    pub vault: Option<Arc<Vault>>,
    /// The Vault event subscriber's streams (written by `intake::vault::subscriber`).
    pub subscriber: Arc<Status>,
}

/// Liveness and readiness, answered on every listener so probes can reach either port.
pub fn router(health: Health) -> Router {
    routes().split_for_parts().0.with_state(health)
}

/// The probes' routes, each registered with its OpenAPI description.
pub fn routes() -> OpenApiRouter<Health> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// One subscription's state, for `/readyz`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct StreamState {
    /// The websocket is open.
    pub connected: bool,
    /// Times it had to be re-made.
    pub reconnects: u64,
    /// Why the last attempt or connection ended.
    pub last_error: Option<String>,
    /// When the last event arrived.
    pub last_event_at: Option<DateTime<Utc>>,
}

/// Every subscription's state, by event type.
#[derive(Debug, Default)]
pub struct Status {
    streams: Mutex<BTreeMap<String, StreamState>>,
}

impl Status {
    /// Changes the state of `event_type`'s stream.
    pub fn update(&self, event_type: &str, change: impl FnOnce(&mut StreamState)) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        change(streams.entry(event_type.to_owned()).or_default());
    }

    /// A copy for reporting.
    pub fn snapshot(&self) -> BTreeMap<String, StreamState> {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Always 200 while the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is up.", body = Alive)))]
pub async fn healthz() -> Json<Alive> {
    Json(Alive {
        status: AliveStatus::Ok,
    })
}

/// `GET /healthz`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Alive {
    /// Always `ok`.
    status: AliveStatus,
}

/// The one status `/healthz` gives.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum AliveStatus {
    /// The process answers.
    Ok,
}

/// One component's readiness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Probe {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Why a component with nothing to check counts as ok (e.g. "not configured").
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'static str>,
}

impl Probe {
    fn from<E: std::fmt::Display>(result: Option<Result<(), E>>) -> Self {
        match result {
            Some(Ok(())) => Probe::ok(),
            Some(Err(e)) => Probe::failed(e.to_string()),
            None => Probe::failed(format!("no answer within {PROBE_TIMEOUT:?}")),
        }
    }

    fn ok() -> Self {
        Probe {
            ok: true,
            error: None,
            detail: None,
        }
    }

    fn failed(error: String) -> Self {
        Probe {
            ok: false,
            error: Some(error),
            detail: None,
        }
    }

    fn nothing_to_check(detail: &'static str) -> Self {
        Probe {
            ok: true,
            error: None,
            detail: Some(detail),
        }
    }
}

/// Readiness report, one entry per component. `503 unavailable` when the store cannot take
/// writes through the append path or its file was lost (nothing could be accepted durably);
/// a failing checkpoint file, target, Vault or Vault stream, or a tampered audit trail, makes the
/// status `degraded` (200): sessions must still be ended while the operator looks.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    #[schema(value_type = ReadyStatus)]
    status: &'static str,
    /// The store takes a write through the same transaction and commit as appends.
    store: Probe,
    /// The SQLite file is still the one sever opened (always ok for PostgreSQL).
    store_file: Probe,
    /// The checkpoint writer's last append to `audit.checkpoint_file` worked, and the file
    /// can be appended to now.
    checkpoint_file: Probe,
    /// The checkpoint writer has noticed no tampering since start (it chains around what it
    /// cannot trust, and says so here until restart).
    audit_chain: Probe,
    targets: BTreeMap<String, Probe>,
    /// Every login lock that has ended (or is past its expiry) has its gate restored: a
    /// restore still failing names the login and target here until it succeeds.
    locks: Probe,
    /// Vault, when configured: it answers, takes sever's token, and has every configured
    /// static role and watched mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    vault: Option<Probe>,
    /// Vault event subscriptions by event type, when the subscriber is enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    vault_subscriber: Option<BTreeMap<String, StreamState>>,
}

/// Probes the store, its file and every target concurrently.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready, or degraded: a target, Vault or the audit chain is unwell.", body = Readiness),
        (status = 503, description = "The store is unavailable.", body = Readiness),
    ))]
pub async fn readyz(State(state): State<Health>) -> (StatusCode, Json<Readiness>) {
    let ctx = &state.ctx;
    let store = tokio::time::timeout(PROBE_TIMEOUT, ctx.audit.probe());
    let store_file = tokio::time::timeout(PROBE_TIMEOUT, ctx.store.verify_file());
    let targets =
        futures_util::future::join_all(ctx.targets.iter().map(|(id, engine)| async move {
            let result = tokio::time::timeout(PROBE_TIMEOUT, engine.check())
                .await
                .ok();
            (id.clone(), Probe::from(result))
        }));
    let vault = async {
        match &state.vault {
            Some(vault) => Some(Probe::from(
                tokio::time::timeout(PROBE_TIMEOUT, vault.probe())
                    .await
                    .ok(),
            )),
            None => None,
        }
    };
    let locks = tokio::time::timeout(PROBE_TIMEOUT, unrestored(ctx));
    let (store, store_file, targets, vault, locks) =
        tokio::join!(store, store_file, targets, vault, locks);
    let locks = Probe::from(locks.ok());
    let store = Probe::from(store.ok());
    let store_file = match store_file {
        Ok(None) => Probe::nothing_to_check("not a file"),
        Ok(Some(result)) => Probe::from(Some(result)),
        Err(_) => Probe::from(None::<Result<(), StoreError>>),
    };
    let checkpoint_file = checkpoint_file_probe(checkpoint_file_status(ctx));
    let audit_chain = Probe::from(Some(ctx.audit_chain.state()));
    let targets: BTreeMap<String, Probe> = targets.into_iter().collect();
    let subscribing = ctx
        .config
        .vault
        .as_ref()
        .is_some_and(|v| v.subscriber.enabled);
    let vault_subscriber = subscribing.then(|| state.subscriber.snapshot());
    let streams_ok = vault_subscriber
        .as_ref()
        .is_none_or(|s| s.values().all(|s| s.connected));
    let (code, status) = if !store.ok || !store_file.ok {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if targets.values().all(|t| t.ok)
        && streams_ok
        && checkpoint_file.ok
        && audit_chain.ok
        && locks.ok
        && vault.as_ref().is_none_or(|v| v.ok)
    {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::OK, "degraded")
    };
    let readiness = Readiness {
        status,
        store,
        store_file,
        checkpoint_file,
        audit_chain,
        targets,
        locks,
        vault,
        vault_subscriber,
    };
    (code, Json(readiness))
}

/// `/readyz`'s overall status.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // Only describes the `&'static str` the handler sets.
enum ReadyStatus {
    /// Everything answered.
    Ready,
    /// Serving, with a component unwell.
    Degraded,
    /// The store is down.
    Unavailable,
}

/// How long past its expiry a lock may still be in force before readiness says so: the
/// expiry's step runs within a poll or two.
const EXPIRY_SLACK: chrono::Duration = chrono::Duration::seconds(30);

/// `Err` naming each login whose lock ended (or expired) without its gate restored yet.
async fn unrestored(ctx: &Context) -> Result<(), String> {
    let pending = ctx
        .store
        .pending_restores()
        .await
        .map_err(|e| e.to_string())?;
    let overdue = ctx.store.active_locks().await.map_err(|e| e.to_string())?;
    let now = chrono::Utc::now();
    let mut problems: Vec<String> = pending
        .into_iter()
        .map(|(target, login, _)| format!("{login:?} on {target:?}: its gate is not restored yet"))
        .collect();
    problems.extend(overdue.into_iter().filter_map(|l| {
        let until = chrono::DateTime::parse_from_rfc3339(l.until.as_deref()?).ok()?;
        (l.state == "active" && until < now - EXPIRY_SLACK).then(|| {
            format!(
                "{:?} on {:?}: lock {} expired at {} and is still in force",
                l.login, l.target, l.lock_id, until
            )
        })
    }));
    problems.extend(undrained(ctx, now).await?);
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}

/// Each database whose drain ended (or expired) without its gate restored yet.
async fn undrained(
    ctx: &Context,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<String>, String> {
    let pending = ctx
        .store
        .pending_reopens()
        .await
        .map_err(|e| e.to_string())?;
    let drains = ctx.store.active_drains().await.map_err(|e| e.to_string())?;
    let mut problems: Vec<String> = pending
        .into_iter()
        .map(|(target, db, _)| format!("database {db:?} on {target:?}: not re-opened yet"))
        .collect();
    problems.extend(drains.into_iter().filter_map(|d| {
        let until = chrono::DateTime::parse_from_rfc3339(d.until.as_deref()?).ok()?;
        (d.state == "active" && until < now - EXPIRY_SLACK).then(|| {
            format!(
                "database {:?} on {:?}: drain {} expired at {} and is still in force",
                d.database, d.target, d.drain_id, until
            )
        })
    }));
    Ok(problems)
}

/// The checkpoint file's component: `None` when `audit.checkpoint_file` is not configured.
fn checkpoint_file_probe(status: Option<Result<(), String>>) -> Probe {
    match status {
        None => Probe::nothing_to_check("not configured"),
        Some(result) => Probe::from(Some(result)),
    }
}

/// The checkpoint file's state for readiness: the writer's last append failed, or the file
/// cannot be opened for append now (so a broken file shows before the next checkpoint is due,
/// and a mended one as soon as it is mended).
fn checkpoint_file_status(ctx: &Context) -> Option<Result<(), String>> {
    let path = ctx.config.audit.checkpoint_file.as_deref()?;
    match ctx.checkpoint_file.state() {
        Some(Err(e)) => Some(Err(e)),
        _ => Some(can_append(path)),
    }
}

/// Whether `path` can be opened for appending (created if missing, as the writer does).
fn can_append(path: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|e| format!("cannot append to the checkpoint file: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_file_component_says_what_it_checked() {
        let p = checkpoint_file_probe(None);
        assert!(p.ok);
        assert_eq!(p.detail, Some("not configured"));
        let dir = tempfile::tempdir().unwrap();
        assert!(checkpoint_file_probe(Some(can_append(&dir.path().join("c.jsonl")))).ok);
        let p = checkpoint_file_probe(Some(can_append(&dir.path().join("no/c.jsonl"))));
        assert!(!p.ok);
        assert!(p.error.unwrap().contains("cannot append"));
    }
}
