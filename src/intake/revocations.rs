//! `POST /v1/revocations`: an operator ends a login's sessions now.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;

use super::error::{ApiError, parse_json};
use super::operator::Operator;
use super::{AppState, RequestMeta};
use crate::pipeline::ActionReport;
use crate::resolve::{self, RevocationRequest};

/// Plans, executes (or dry-runs) and returns the finished report.
pub async fn post_revocation(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ActionReport>, ApiError> {
    let actor = operator.actor();
    let body = state.body(&meta, &actor, body).await?;
    let request: RevocationRequest = match parse_json(&body) {
        Ok(request) => request,
        Err(e) => return Err(state.reject(&meta, &actor, e).await),
    };
    let plan = match resolve::revocation(&state.ctx.config, &request) {
        Ok(plan) => plan,
        Err(e) => return Err(state.reject(&meta, &actor, e.into()).await),
    };
    tracing::info!(action_id = %plan.action_id, operator = %operator.name, login = %request.login,
        dry_run = request.dry_run, "revocation requested");
    match state.start(plan, actor).await {
        Ok(Ok(report)) => Ok(Json(report)),
        Ok(Err(e)) => Err(ApiError::Unavailable(e.to_string())),
        Err(e) => Err(ApiError::Unavailable(format!("action aborted: {e}"))),
    }
}
