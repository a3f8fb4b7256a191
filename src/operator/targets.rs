//! `GET /v1/targets` and `sever targets`: every configured target, each probed now (its
//! sessions listed, as the metrics collector does, and its connection limit read) within a
//! bounded time, so one target that hangs delays the answer by at most that bound.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::auth::Operator;
use crate::collector;
use crate::config::Engine as EngineKind;
use crate::context::Context;
use crate::http::Actor;
use crate::terminate::Engine;

/// The longest a probe waits, whatever `termination.timeout` says: the answer is for a
/// person looking at a screen.
const PROBE_CAP: Duration = Duration::from_secs(5);

/// Every configured target and how it answered.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TargetList {
    /// In id order.
    pub targets: Vec<TargetStatus>,
}

/// One target as probed now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TargetStatus {
    /// Target id.
    pub id: String,
    /// Its engine.
    pub engine: EngineKind,
    /// Whether its sessions could be listed within the probe's time.
    pub reachable: bool,
    /// How long listing its sessions took, connection included (reachable targets only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Why it is not reachable (the engine's error; never its URL or password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Client sessions it listed (replication and background workers left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u64>,
    /// Client connections it accepts from non-administrators, where the engine has such a
    /// limit and it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<u64>,
    /// When the probe ended.
    pub checked_at: DateTime<Utc>,
}

/// Lists every configured target, each probed now.
#[utoipa::path(get,
    path = "/v1/targets",
    tag = "operator",
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "Every target, reachable or not, with its latency, client sessions and connection limit.", body = TargetList),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn get_targets(
    State(ctx): State<Arc<Context>>,
    operator: Operator,
) -> (Extension<Actor>, Json<TargetList>) {
    (Extension(operator.actor()), Json(list(&ctx).await))
}

/// Probes every target at once, each within `termination.timeout` (at most [`PROBE_CAP`]).
pub async fn list(ctx: &Context) -> TargetList {
    let timeout = ctx.config.termination.timeout.min(PROBE_CAP);
    let probes = ctx.targets.iter().filter_map(|(id, engine)| {
        let kind = ctx.config.targets.get(id)?.engine;
        Some(probe(id, kind, engine.as_ref(), timeout))
    });
    TargetList {
        targets: futures_util::future::join_all(probes).await,
    }
}

/// Lists `engine`'s sessions and reads its connection limit, side by side, each within
/// `timeout`.
async fn probe(id: &str, kind: EngineKind, engine: &dyn Engine, timeout: Duration) -> TargetStatus {
    let limit = async {
        match tokio::time::timeout(timeout, engine.connection_limit()).await {
            Ok(Ok(limit)) => Some(limit),
            // SQL Server has none; otherwise the listing says whether the target is up.
            Ok(Err(_)) | Err(_) => None,
        }
    };
    let (probe, connection_limit) = tokio::join!(collector::probe(engine, timeout), limit);
    let mut status = TargetStatus {
        id: id.to_owned(),
        engine: kind,
        reachable: false,
        latency_ms: None,
        error: None,
        sessions: None,
        connection_limit,
        checked_at: Utc::now(),
    };
    match probe.listed {
        Ok(listed) => {
            status.reachable = true;
            status.latency_ms = Some(probe.took.as_secs_f64() * 1000.0);
            status.sessions = Some(collector::client_sessions(&listed).count() as u64);
        }
        // As a failed target of a sessions listing shows: the driver's message, never the
        // target's URL.
        Err(e) => status.error = Some(e.to_string()),
    }
    status
}
