//! `POST /v1/revocations` and `sever revoke`: an operator ends a login's sessions now.
//! Both plan with [`plan`]; the API stores the plan for the queue ([`submit`]) and waits,
//! the command line runs it in-process.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;

use super::OperatorState;
use super::auth::Operator;
use crate::action::Plan;
use crate::config::Config;
use crate::context::Context;
use crate::http::error::{ApiError, parse_json};
use crate::http::reply::finished;
use crate::http::{self, Actor};
use crate::queue::{Submission, Submitted};
use crate::resolve::{self, ResolveError, RevocationRequest};

/// Plans and stores the revocation, then returns the finished report (or `202` with the
/// action id if it is still running when the request's time limit nears).
pub async fn post_revocation(
    State(state): State<OperatorState>,
    operator: Operator,
    body: Result<Bytes, BytesRejection>,
) -> (Extension<Actor>, Result<Response, ApiError>) {
    let actor = operator.actor();
    let answer = async {
        let body = http::body(body, state.max_body)?;
        let request: RevocationRequest = parse_json(&body)?;
        let plan = plan(&state.ctx.config, &request)?;
        tracing::info!(action_id = %plan.action_id, operator = %operator.name, login = %request.login,
            dry_run = request.dry_run, "revocation requested");
        let action_id = submit(&state.ctx, plan, &actor).await?;
        finished(&state.ctx, action_id).await
    };
    let answer = answer.await;
    (Extension(actor), answer)
}

/// The plan of a revocation, checked against the config before anything is connected.
pub fn plan(config: &Config, request: &RevocationRequest) -> Result<Plan, ResolveError> {
    resolve::revocation(config, request)
}

/// Stores the plan for the queue to carry out; the action's id.
pub async fn submit(ctx: &Context, plan: Plan, actor: &Actor) -> Result<uuid::Uuid, ApiError> {
    let submission = Submission::new(plan, actor.to_string());
    match ctx.queue.submit(&ctx.audit, &submission).await {
        Ok(Submitted::Accepted(action_id)) => Ok(action_id),
        // No claims were taken, so a duplicate cannot happen.
        Ok(Submitted::Duplicate { action_id, .. }) => Err(ApiError::Unavailable(format!(
            "unexpected duplicate of action {action_id}"
        ))),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}
