//! `GET /v1/actions/{id}`: an action's progress and, once finished, its report.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};

use super::error::ApiError;
use super::operator::Operator;
use super::{AppState, RequestMeta};
use crate::queue::ActionStatus;

/// Shows an action: its status, each target's attempts and last error, and the report.
pub async fn get_action(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    id: Result<Path<uuid::Uuid>, PathRejection>,
) -> Result<Json<ActionStatus>, ApiError> {
    let Path(id) = match id {
        Ok(id) => id,
        Err(e) => {
            return Err(state
                .reject(&meta, &operator.actor(), ApiError::Invalid(e.body_text()))
                .await);
        }
    };
    match state.ctx.queue.status(id).await {
        Ok(Some(status)) => Ok(Json(status)),
        Ok(None) => Err(ApiError::UnknownAction(id.to_string())),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}
