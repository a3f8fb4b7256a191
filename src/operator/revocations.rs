//! `POST /v1/revocations` and `sever revoke`: an operator ends a login's sessions now.
//! Both plan with [`plan`]; the API stores the plan for the queue ([`submit`]) and waits,
//! the command line runs it in-process.

use std::collections::BTreeMap;

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
use crate::http::{self, Actor};
use crate::queue::{Submission, Submitted};
use crate::resolve::{self, ResolveError, RevocationRequest};
use crate::terminate::EngineError;
use crate::terminate::selected::SelectRequest;

/// Plans and stores the revocation, then returns the finished report (or `202` with the
/// action id if it is still running when the request's time limit nears).
#[utoipa::path(post,
    path = "/v1/revocations",
    tag = "operator",
    security(("operator_token" = [])),
    request_body = RevocationRequest,
    responses(
        (status = 200, description = "Finished: the report.", body = crate::action::ActionReport),
        (status = 202, description = "Stored, not finished (or scheduled): where to follow it.", body = crate::http::openapi::AcceptedBody),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
        (status = 400, description = "`malformed_json` or `unreadable_body`.", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`selection_grew`: more sessions than `expect_count`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn post_revocation(
    State(state): State<OperatorState>,
    operator: Operator,
    body: Result<Bytes, BytesRejection>,
) -> (Extension<Actor>, Result<Response, ApiError>) {
    let actor = operator.actor();
    let answer = async {
        let body = http::body(body, state.max_body)?;
        let request: RevocationRequest = parse_json(&body)?;
        let mut plan = plan(&state.ctx.config, &request)?;
        check_count(&state.ctx, &mut plan, request.expect_count).await?;
        tracing::info!(action_id = %plan.action_id, operator = %operator.name,
            logins = ?request.selector.logins, all_logins = request.all_logins,
            mode = plan.ending.mode.as_str(), dry_run = request.dry_run, "revocation requested");
        let action_id = submit(&state.ctx, plan, &actor).await?;
        crate::http::reply::answered(&state.ctx, action_id).await
    };
    let answer = answer.await;
    (Extension(actor), answer)
}

/// The plan of a revocation, checked against the config before anything is connected.
pub fn plan(config: &Config, request: &RevocationRequest) -> Result<Plan, ResolveError> {
    resolve::revocation(config, request)
}

/// For a selector revocation that is carried out with an `expect_count` (every
/// `all_logins` one): previews it on each target, changing nothing, and refuses it with
/// `409` if more sessions are selected now than its dry run found, or with `422` if a
/// target refuses it (it would reach every session there). Each target may then end at
/// most what it showed here, so a selection that grows before the step runs is refused
/// there too.
pub async fn check_count(
    ctx: &Context,
    plan: &mut Plan,
    expected: Option<usize>,
) -> Result<(), ApiError> {
    let (Some(selection), Some(expected), false) = (&plan.selection, expected, plan.dry_run) else {
        return Ok(());
    };
    let termination = &ctx.config.termination;
    let ending = plan.ending;
    let previews = plan.steps.iter().map(|step| async move {
        let request = SelectRequest {
            selector: selection.selector.clone(),
            all_logins: selection.all_logins,
            ending,
            protected: step.protected.clone(),
            dry_run: true,
            verify_timeout: termination.verify_timeout,
            at_most: None,
            journal: None,
            pick: None,
        };
        (
            step.target.clone(),
            ctx.preview(&step.target, &request).await,
        )
    });
    let mut counts = BTreeMap::new();
    for (target, result) in futures_util::future::join_all(previews).await {
        match result {
            Ok(outcome) => {
                counts.insert(target, outcome.matched.len());
            }
            Err(e @ (EngineError::Refused(_) | EngineError::Unsupported(_))) => {
                return Err(ApiError::Invalid(format!("target {target:?}: {e}")));
            }
            Err(e) => {
                return Err(ApiError::Unavailable(format!(
                    "target {target:?} could not be counted, so the revocation was not \
                     started: {e}"
                )));
            }
        }
    }
    let found = counts.values().sum();
    if found > expected {
        return Err(ApiError::SelectionGrew { expected, found });
    }
    if let Some(selection) = &mut plan.selection {
        selection.at_most = counts;
    }
    Ok(())
}

/// Stores the plan for the queue to carry out; the action's id.
pub async fn submit(ctx: &Context, plan: Plan, actor: &Actor) -> Result<uuid::Uuid, ApiError> {
    let submission = Submission::new(plan, actor.to_string());
    match crate::runner::schedule::submit(ctx, submission).await {
        Ok(Submitted::Accepted(action_id)) => Ok(action_id),
        // No claims were taken, so a duplicate cannot happen.
        Ok(Submitted::Duplicate { action_id, .. }) => Err(ApiError::Unavailable(format!(
            "unexpected duplicate of action {action_id}"
        ))),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}
