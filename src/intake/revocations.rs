//! `POST /v1/revocations`: an operator ends a login's sessions now.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;

use super::error::{ApiError, parse_json};
use super::operator::Operator;
use super::{AppState, RequestMeta};
use crate::queue::{Submission, Submitted};
use crate::resolve::{self, RevocationRequest};

/// Plans and stores the revocation, then returns the finished report (or `202` with the
/// action id if it is still running when the request's time limit nears).
pub async fn post_revocation(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
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
    let submission = Submission {
        plan,
        actor,
        claims: Vec::new(),
        before: Vec::new(),
        retry_for: None,
    };
    match state.ctx.queue.submit(&state.ctx.audit, &submission).await {
        Ok(Submitted::Accepted(action_id)) => state.finished(action_id).await,
        // No claims were taken, so a duplicate cannot happen.
        Ok(Submitted::Duplicate { action_id, .. }) => Err(ApiError::Unavailable(format!(
            "unexpected duplicate of action {action_id}"
        ))),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}
