//! `GET /v1/policies`, `POST /v1/policies/{name}/run` and `POST /v1/policies/{name}/resume`:
//! the policies with their last and next evaluation, an evaluation now (a dry run unless
//! `execute`), and resuming a policy that paused itself.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::OperatorState;
use super::auth::Operator;
use crate::http::error::{ApiError, parse_json};
use crate::http::{self, Actor};
use crate::policy::{self, Evaluation, PolicyError, PolicyView, Trigger};

/// Every policy (the `[[policies]]` rules and the targets' sweeps) with its state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicyList {
    /// The policies, rules first, in config order.
    pub policies: Vec<PolicyView>,
}

/// Lists the policies.
#[utoipa::path(get,
    path = "/v1/policies",
    tag = "operator",
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "The policies and their state.", body = PolicyList),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn get_policies(
    State(state): State<OperatorState>,
    operator: Operator,
) -> (Extension<Actor>, Result<Json<PolicyList>, ApiError>) {
    let answer = policy::list(&state.ctx)
        .await
        .map(|policies| Json(PolicyList { policies }))
        .map_err(api_error);
    (Extension(operator.actor()), answer)
}

/// `POST /v1/policies/{name}/run`'s body (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// End what the policy picks, if it enforces; without it the evaluation only reports.
    #[serde(default)]
    pub execute: bool,
}

/// Evaluates a policy now and answers with the evaluation (and its action's report).
#[utoipa::path(post,
    path = "/v1/policies/{name}/run",
    tag = "operator",
    security(("operator_token" = [])),
    request_body = Option<RunRequest>,
    params(("name" = String, Path, description = "The policy.")),
    responses(
        (status = 200, description = "The evaluation and its action's report.", body = Evaluation),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
        (status = 400, description = "`malformed_json` or `unreadable_body`.", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`unknown_policy`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn run_policy(
    State(state): State<OperatorState>,
    operator: Operator,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> (Extension<Actor>, Result<Json<Evaluation>, ApiError>) {
    let answer = async {
        let Path(name) = name.map_err(|e| ApiError::Invalid(e.body_text()))?;
        let body = http::body(body, state.max_body)?;
        let request: RunRequest = if body.iter().all(u8::is_ascii_whitespace) {
            RunRequest::default()
        } else {
            parse_json(&body)?
        };
        let found = policy::find(&state.ctx.config, &name).map_err(api_error)?;
        tracing::info!(policy = %name, operator = %operator.name, execute = request.execute,
            "policy run requested");
        policy::evaluate(&state.ctx, found, &Trigger::manual(request.execute))
            .await
            .map(Json)
            .map_err(api_error)
    };
    let answer = answer.await;
    (Extension(operator.actor()), answer)
}

/// What resuming did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Resumed {
    /// The policy.
    pub policy: String,
    /// It was paused and runs again; `false` when it was not paused.
    pub resumed: bool,
}

/// Resumes a policy that paused itself.
#[utoipa::path(post,
    path = "/v1/policies/{name}/resume",
    tag = "operator",
    security(("operator_token" = [])),
    params(("name" = String, Path, description = "The policy.")),
    responses(
        (status = 200, description = "The policy's state now.", body = Resumed),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`unknown_policy`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn resume_policy(
    State(state): State<OperatorState>,
    operator: Operator,
    name: Result<Path<String>, PathRejection>,
) -> (Extension<Actor>, Result<Json<Resumed>, ApiError>) {
    let actor = operator.actor();
    let answer = async {
        let Path(name) = name.map_err(|e| ApiError::Invalid(e.body_text()))?;
        let resumed = policy::resume(&state.ctx, &name, &actor.to_string())
            .await
            .map_err(api_error)?;
        Ok(Json(Resumed {
            policy: name,
            resumed,
        }))
    };
    let answer = answer.await;
    (Extension(actor), answer)
}

/// The API's answer to a policy failure.
pub fn api_error(e: PolicyError) -> ApiError {
    match e {
        PolicyError::Unknown(name) => ApiError::UnknownPolicy(name),
        PolicyError::Invalid(why) => ApiError::Invalid(why),
        other => ApiError::Unavailable(other.to_string()),
    }
}
