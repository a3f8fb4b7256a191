//! `POST /v1/audit/verifications` and `GET /v1/audit/verifications[/{id}]`: a full
//! verification of the audit trail (the one `sever audit verify` runs, with the configured
//! key, pin and checkpoint file) can outlast the request timeout, so it runs in a task on
//! the replica asked, and its row in the store says how it is going to every replica.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::audit::{CheckpointKey, Entry, Kind, VerifyOptions, VerifyReport};
use crate::context::Context;
use crate::http::Actor;
use crate::http::error::ApiError;
use crate::operator::OperatorState;
use crate::operator::auth::Operator;
use crate::store::{VerificationEnd, VerificationRow};

/// How often a running verification refreshes its heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A running verification whose heartbeat is older than this reads as `abandoned`: its
/// replica stopped (six missed beats, so a busy store does not fake a death).
const ABANDONED_AFTER: Duration = Duration::from_secs(30);
/// How many `GET /v1/audit/verifications` lists.
const RECENT: i64 = 20;

/// The verification this replica runs, if any: at most one at a time.
#[derive(Debug, Default)]
pub struct Verifications {
    running: Mutex<Option<Uuid>>,
}

/// Clears the running verification when its task ends, however it ends.
struct Running {
    verifications: Arc<Verifications>,
    id: Uuid,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self
            .verifications
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *running == Some(self.id) {
            *running = None;
        }
    }
}

/// Where a verification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    /// Its replica is verifying.
    Running,
    /// Finished: the trail and its checkpoints check out.
    Ok,
    /// Finished: the report names what is wrong.
    Broken,
    /// The store could not be read; `error` says why.
    Failed,
    /// Its replica stopped beating while it ran (it died or was stopped); ask again.
    Abandoned,
}

/// `202`: a verification started, or the one already running on this replica.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerificationStarted {
    /// The verification.
    pub id: Uuid,
    /// `running`.
    pub status: VerificationStatus,
    /// Where to follow it: `/v1/audit/verifications/{id}`.
    pub href: String,
}

/// A verification, as any replica reads it from the store.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerificationView {
    /// The verification.
    pub id: String,
    /// Where it is.
    pub status: VerificationStatus,
    /// Who asked (`operator:alice`).
    pub requested_by: String,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// When its replica last said it was at it.
    pub heartbeat_at: String,
    /// When it finished (`null` while running or abandoned).
    pub finished_at: Option<String>,
    /// Once `ok` or `broken`: what `sever audit verify --json` prints.
    #[schema(value_type = Option<VerifyReport>)]
    pub report: Option<serde_json::Value>,
    /// Once `failed`: why.
    pub error: Option<String>,
}

/// The newest verifications.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerificationList {
    /// At most 20, newest first.
    pub verifications: Vec<VerificationView>,
}

impl VerificationView {
    /// `row` as seen at `now`: running with a stale heartbeat is abandoned.
    fn of(row: VerificationRow, now: DateTime<Utc>) -> Self {
        let status = match row.status.as_str() {
            "ok" => VerificationStatus::Ok,
            "broken" => VerificationStatus::Broken,
            "failed" => VerificationStatus::Failed,
            _ => {
                let beat = DateTime::parse_from_rfc3339(&row.heartbeat_at)
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC);
                let stale = chrono::Duration::from_std(ABANDONED_AFTER).unwrap_or_default();
                if now - beat > stale {
                    VerificationStatus::Abandoned
                } else {
                    VerificationStatus::Running
                }
            }
        };
        let report = row.report.and_then(|r| serde_json::from_str(&r).ok());
        Self {
            id: row.id,
            status,
            requested_by: row.requested_by,
            started_at: row.started_at,
            heartbeat_at: row.heartbeat_at,
            finished_at: row.finished_at,
            report,
            error: row.error,
        }
    }
}

/// Starts verifying the whole trail in the background, unless this replica already is.
#[utoipa::path(post,
    path = "/v1/audit/verifications",
    tag = "operator",
    security(("operator_token" = [])),
    responses(
        (status = 202, description = "Started (or already running on this replica): where to follow it.", body = VerificationStarted),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn post_verification(
    State(state): State<OperatorState>,
    operator: Operator,
) -> (Extension<Actor>, Result<Response, ApiError>) {
    let actor = operator.actor();
    let answer = async {
        let id = start(&state.ctx, &state.verifications, &actor.to_string()).await?;
        let href = format!("/v1/audit/verifications/{id}");
        let body = VerificationStarted {
            id,
            status: VerificationStatus::Running,
            href: href.clone(),
        };
        Ok((StatusCode::ACCEPTED, [(header::LOCATION, href)], Json(body)).into_response())
    };
    let answer = answer.await;
    (Extension(actor), answer)
}

/// Starts a verification for `actor` on this replica, or returns the one running.
pub async fn start(
    ctx: &Arc<Context>,
    verifications: &Arc<Verifications>,
    actor: &str,
) -> Result<Uuid, ApiError> {
    let id = Uuid::now_v7();
    {
        let mut running = verifications
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(id) = *running {
            return Ok(id);
        }
        *running = Some(id);
    }
    // From here the slot is this id's; the guard frees it if anything below fails.
    let guard = Running {
        verifications: verifications.clone(),
        id,
    };
    let options = options(ctx)?;
    ctx.store
        .start_verification(&id.to_string(), actor, ctx.queue.owner(), Utc::now())
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    tracing::info!(verification_id = %id, actor, "audit verification started");
    tokio::spawn(run(ctx.clone(), guard, actor.to_owned(), options));
    Ok(id)
}

/// What `sever audit verify` checks with this config: the checkpoint keys, the unkeyed
/// pin and the checkpoint file (the server appends to it, so it can be checked against).
fn options(ctx: &Context) -> Result<VerifyOptions, ApiError> {
    let audit = &ctx.config.audit;
    let keys = CheckpointKey::load_all(audit).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(VerifyOptions {
        keys,
        pin: audit.unkeyed_checkpoints_through.clone(),
        max_checkpoint_age: None,
        checkpoint_file: audit.checkpoint_file.clone(),
        now: None,
    })
}

/// Verifies, beating the heartbeat meanwhile, then records the outcome: first in the
/// audit trail (so the check is tamper-evident), then in the verification's row.
async fn run(ctx: Arc<Context>, guard: Running, actor: String, options: VerifyOptions) {
    let id = guard.id.to_string();
    let verify = ctx.audit.verify_with(&options);
    tokio::pin!(verify);
    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let result = loop {
        tokio::select! {
            result = &mut verify => break result,
            _ = beat.tick() => {
                if let Err(e) = ctx.store.beat_verification(&id, Utc::now()).await {
                    tracing::warn!(verification_id = %id, error = %e,
                        "could not refresh an audit verification's heartbeat");
                }
            }
        }
    };
    let (end, detail) = match result {
        Ok(report) => {
            let status = if report.ok { "ok" } else { "broken" };
            let detail = json!({
                "verification_id": id,
                "status": status,
                "ok": report.ok,
                "records": report.records,
                "problems": report.problems.len(),
                "checkpoint_problems": report.checkpoints.problems.len(),
            });
            let end = VerificationEnd {
                status,
                report: serde_json::to_string(&report).ok(),
                error: None,
            };
            (end, detail)
        }
        Err(e) => {
            let detail = json!({
                "verification_id": id,
                "status": "failed",
                "ok": false,
                "error": e.to_string(),
            });
            let end = VerificationEnd {
                status: "failed",
                report: None,
                error: Some(e.to_string()),
            };
            (end, detail)
        }
    };
    let entry = Entry::new(Kind::AuditVerified, actor, None, detail);
    if let Err(e) = ctx.audit.append(entry).await {
        tracing::error!(verification_id = %id, error = %e,
            "could not record an audit verification's outcome in the trail");
    }
    if let Err(e) = ctx.store.finish_verification(&id, &end, Utc::now()).await {
        tracing::error!(verification_id = %id, error = %e,
            "could not record how an audit verification ended");
    }
    tracing::info!(verification_id = %id, status = end.status, "audit verification finished");
    drop(guard);
}

/// Shows a verification: running, or its outcome and report.
#[utoipa::path(get,
    path = "/v1/audit/verifications/{id}",
    tag = "operator",
    security(("operator_token" = [])),
    params(("id" = Uuid, Path, description = "The verification.")),
    responses(
        (status = 200, description = "Where it is and, once finished, its report or error.", body = VerificationView),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request`: the id is no UUID.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`unknown_verification`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn get_verification(
    State(ctx): State<Arc<Context>>,
    operator: Operator,
    id: Result<Path<Uuid>, PathRejection>,
) -> (Extension<Actor>, Result<Json<VerificationView>, ApiError>) {
    let answer = async {
        let Path(id) = id.map_err(|e| ApiError::Invalid(e.body_text()))?;
        let row = ctx
            .store
            .verification(&id.to_string())
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
            .ok_or_else(|| ApiError::UnknownVerification(id.to_string()))?;
        Ok(Json(VerificationView::of(row, Utc::now())))
    };
    let answer = answer.await;
    (Extension(operator.actor()), answer)
}

/// Lists the newest verifications, from any replica.
#[utoipa::path(get,
    path = "/v1/audit/verifications",
    tag = "operator",
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "The newest 20, newest first.", body = VerificationList),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn list_verifications(
    State(ctx): State<Arc<Context>>,
    operator: Operator,
) -> (Extension<Actor>, Result<Json<VerificationList>, ApiError>) {
    let answer = async {
        let rows = ctx
            .store
            .recent_verifications(RECENT)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let now = Utc::now();
        let verifications = rows
            .into_iter()
            .map(|row| VerificationView::of(row, now))
            .collect();
        Ok(Json(VerificationList { verifications }))
    };
    let answer = answer.await;
    (Extension(operator.actor()), answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, heartbeat_at: &str) -> VerificationRow {
        VerificationRow {
            id: "v".into(),
            status: status.into(),
            requested_by: "operator:alice".into(),
            replica: "r".into(),
            started_at: heartbeat_at.into(),
            heartbeat_at: heartbeat_at.into(),
            finished_at: None,
            report: None,
            error: None,
        }
    }

    #[test]
    fn a_running_row_with_a_stale_heartbeat_reads_as_abandoned() {
        let now = Utc::now();
        let fresh = crate::store::timestamp(now - chrono::Duration::seconds(10));
        let stale = crate::store::timestamp(now - chrono::Duration::seconds(31));
        let status = |s, beat: &str| VerificationView::of(row(s, beat), now).status;
        assert_eq!(status("running", &fresh), VerificationStatus::Running);
        assert_eq!(status("running", &stale), VerificationStatus::Abandoned);
        assert_eq!(status("ok", &stale), VerificationStatus::Ok);
        assert_eq!(status("broken", &stale), VerificationStatus::Broken);
        assert_eq!(status("failed", &stale), VerificationStatus::Failed);
    }
}
