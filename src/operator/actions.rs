//! `GET /v1/actions/{id}`: an action's progress and, once finished, its report.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};

use super::auth::Operator;
use crate::context::Context;
use crate::http::Actor;
use crate::http::error::ApiError;
use crate::queue::ActionStatus;

/// Shows an action: its status, each target's attempts and last error, and the report.
pub async fn get_action(
    State(ctx): State<Arc<Context>>,
    operator: Operator,
    id: Result<Path<uuid::Uuid>, PathRejection>,
) -> (Extension<Actor>, Result<Json<ActionStatus>, ApiError>) {
    let answer = async {
        let Path(id) = id.map_err(|e| ApiError::Invalid(e.body_text()))?;
        status(&ctx, id).await.map(Json)
    };
    let answer = answer.await;
    (Extension(operator.actor()), answer)
}

/// The status of action `id`.
pub async fn status(ctx: &Context, id: uuid::Uuid) -> Result<ActionStatus, ApiError> {
    match ctx.queue.status(id).await {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err(ApiError::UnknownAction(id.to_string())),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}
