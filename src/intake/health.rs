//! `GET /healthz` (the process is up) and `GET /readyz` (store writable, targets reachable).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;

/// Upper bound for each readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Always 200 while the process serves HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// One component's readiness.
#[derive(Debug, Serialize)]
pub struct Probe {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Probe {
    fn from<E: std::fmt::Display>(result: Option<Result<(), E>>) -> Self {
        match result {
            Some(Ok(())) => Probe {
                ok: true,
                error: None,
            },
            Some(Err(e)) => Probe {
                ok: false,
                error: Some(e.to_string()),
            },
            None => Probe {
                ok: false,
                error: Some(format!("no answer within {PROBE_TIMEOUT:?}")),
            },
        }
    }
}

/// Readiness report: 503 when the store cannot take writes (nothing could be audited);
/// unreachable targets, and a checkpoint file that cannot be appended to, are reported by
/// name and make the status `degraded`.
#[derive(Debug, Serialize)]
pub struct Readiness {
    status: &'static str,
    store: Probe,
    targets: BTreeMap<String, Probe>,
    /// The last append to `audit.checkpoint_file`, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_file: Option<Probe>,
    /// Vault event subscriptions by event type, when the subscriber is enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    vault_subscriber: Option<BTreeMap<String, super::vault::subscriber::StreamState>>,
}

/// Probes the store and every target concurrently.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let ctx = &state.ctx;
    let store = tokio::time::timeout(PROBE_TIMEOUT, ctx.store.probe());
    let targets =
        futures_util::future::join_all(ctx.targets.iter().map(|(id, engine)| async move {
            let result = tokio::time::timeout(PROBE_TIMEOUT, engine.check())
                .await
                .ok();
            (id.clone(), Probe::from(result))
        }));
    let (store, targets) = tokio::join!(store, targets);
    let store = Probe::from(store.ok());
    let targets: BTreeMap<String, Probe> = targets.into_iter().collect();
    let subscribing = ctx
        .config
        .vault
        .as_ref()
        .is_some_and(|v| v.subscriber.enabled);
    let vault_subscriber = subscribing.then(|| state.vault_status.snapshot());
    let streams_ok = vault_subscriber
        .as_ref()
        .is_none_or(|s| s.values().all(|s| s.connected));
    let checkpoint_file = ctx.checkpoint_file.state().map(|s| Probe::from(Some(s)));
    let checkpoint_file_ok = checkpoint_file.as_ref().is_none_or(|p| p.ok);
    let (code, status) = if !store.ok {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if targets.values().all(|t| t.ok) && streams_ok && checkpoint_file_ok {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::OK, "degraded")
    };
    let readiness = Readiness {
        status,
        store,
        targets,
        checkpoint_file,
        vault_subscriber,
    };
    (code, Json(readiness))
}
