//! Replies shared by the areas: an accepted action (`202`), a finished one, a status.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use crate::context::Context;

/// `200 {"status": …, "reason": …}` for events that need no action.
pub fn status_response(status: &str, reason: &str) -> Response {
    (
        StatusCode::OK,
        Json(json!({"status": status, "reason": reason})),
    )
        .into_response()
}

/// `202` for a stored action: accepted (or still running) and where to follow it.
pub fn running(action_id: uuid::Uuid, status: &str) -> Response {
    let body = json!({
        "action_id": action_id,
        "status": status,
        "poll": format!("/v1/actions/{action_id}"),
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// `202` for an action that waits for its time: when it acts, when it is announced, and
/// where to follow it (`POST /v1/actions/{id}/cancel` calls it off until then).
pub fn scheduled(action_id: uuid::Uuid, schedule: &crate::action::Schedule) -> Response {
    let body = json!({
        "action_id": action_id,
        "status": "scheduled",
        "act_at": schedule.act_at,
        "announce_at": schedule.announce_at,
        "window": schedule.window,
        "poll": format!("/v1/actions/{action_id}"),
        "cancel": format!("/v1/actions/{action_id}/cancel"),
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// The finished report of `action_id`, waiting for it within the request's time limit;
/// `202 {"status": "running"}` if it is still running then.
pub async fn finished(ctx: &Context, action_id: uuid::Uuid) -> Result<Response, ApiError> {
    // Leave time to answer before the request timeout cuts the connection.
    let budget: Duration = ctx.config.server.request_timeout.mul_f64(0.9);
    match ctx.queue.wait(action_id, budget).await {
        Ok(Some(report)) => Ok(Json(report).into_response()),
        Ok(None) => Ok(running(action_id, "running")),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

/// [`scheduled`] for an action that waits for its time, else [`finished`].
pub async fn answered(ctx: &Context, action_id: uuid::Uuid) -> Result<Response, ApiError> {
    let stored = ctx
        .queue
        .stored_plan(action_id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    match stored.and_then(|(plan, _, _)| plan.schedule) {
        Some(schedule) if !schedule.expired => Ok(scheduled(action_id, &schedule)),
        _ => finished(ctx, action_id).await,
    }
}
