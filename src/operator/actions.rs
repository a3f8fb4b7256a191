//! `GET /v1/actions/{id}`: an action's progress and, once finished, its report; and
//! `GET /v1/actions`: the actions, filtered, newest first, a bounded page at a time.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Operator;
use crate::action::{ActionReport, Origin};
use crate::context::Context;
use crate::http::Actor;
use crate::http::error::ApiError;
use crate::queue::{ActionFilter, ActionStatus, ActionSummary, Cancelled};

/// Shows an action: its status, each target's attempts and last error, and the report.
#[utoipa::path(get,
    path = "/v1/actions/{id}",
    tag = "operator",
    security(("operator_token" = [])),
    params(("id" = uuid::Uuid, Path, description = "The action.")),
    responses(
        (status = 200, description = "Its status and, once finished, its report.", body = ActionStatus),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`unknown_action`.", body = crate::http::openapi::ErrorBody),
    ))]
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

/// The statuses `GET /v1/actions` filters on.
const STATUSES: [&str; 6] = [
    "running",
    "scheduled",
    "completed",
    "incomplete",
    "cancelled",
    "expired",
];

/// The most actions one page of `GET /v1/actions` holds.
pub const MAX_PAGE: usize = 500;

/// `GET /v1/actions`'s query: filters, the page size and the cursor.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this origin (`event`, `revocation`, `aws`, `vault`, `lock`, `unlock`, `drain`,
    /// `undrain`, `sweep`).
    pub origin: Option<String>,
    /// Only this actor, exactly (`operator:alice`).
    pub actor: Option<String>,
    /// Only `running`, `scheduled` (running, waiting for its time), `completed`,
    /// `incomplete`, `cancelled` or `expired` actions.
    pub status: Option<String>,
    /// Only actions accepted at or after this moment (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// The previous page's `next`: actions accepted before that one.
    pub before: Option<uuid::Uuid>,
    /// How many (default 50, at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
}

/// One page of actions, newest first, and the cursor of the next page (`null` at the end).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActionPage {
    /// The actions.
    pub actions: Vec<ActionSummary>,
    /// Pass as `before` for the next page.
    pub next: Option<String>,
}

/// Lists actions with filters, newest first, paginated.
#[utoipa::path(get,
    path = "/v1/actions",
    tag = "operator",
    security(("operator_token" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "One page, newest first.", body = ActionPage),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn list_actions(
    State(ctx): State<Arc<Context>>,
    operator: Operator,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> (Extension<Actor>, Result<Json<ActionPage>, ApiError>) {
    let answer = async {
        let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
        list(&ctx, &q).await.map(Json)
    };
    let answer = answer.await;
    (Extension(operator.actor()), answer)
}

/// One page of the actions `q` selects; bad values are refused, never ignored.
pub async fn list(ctx: &Context, q: &ListQuery) -> Result<ActionPage, ApiError> {
    if let Some(origin) = &q.origin
        && !Origin::NAMES.contains(&origin.as_str())
    {
        return Err(ApiError::Invalid(format!(
            "origin: {origin:?} is none of {}",
            Origin::NAMES.join(", ")
        )));
    }
    if let Some(status) = &q.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::Invalid(format!(
            "status: {status:?} is none of {}",
            STATUSES.join(", ")
        )));
    }
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::Invalid(format!(
            "limit: {limit} is not between 1 and {MAX_PAGE}"
        )));
    }
    let filter = ActionFilter {
        origin: q.origin.clone(),
        actor: q.actor.clone(),
        status: q.status.clone(),
        since: q.since,
        before: q.before,
        // One more than asked says whether a next page exists.
        limit: limit + 1,
    };
    let mut actions = ctx
        .queue
        .list(&filter)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let more = actions.len() > limit;
    actions.truncate(limit);
    let next = more
        .then(|| actions.last().map(|a| a.action_id.clone()))
        .flatten();
    Ok(ActionPage { actions, next })
}

/// `POST /v1/actions/{id}/cancel`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Why; required, recorded and announced.
    pub reason: String,
}

/// Calls off a scheduled action that has not acted: `200` with its report (status
/// `cancelled`), `409 not_cancellable` once it has begun or finished.
#[utoipa::path(post,
    path = "/v1/actions/{id}/cancel",
    tag = "operator",
    security(("operator_token" = [])),
    request_body = CancelRequest,
    params(("id" = uuid::Uuid, Path, description = "The action.")),
    responses(
        (status = 200, description = "Called off: its report, status `cancelled`.", body = ActionReport),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
        (status = 400, description = "`malformed_json` or `unreadable_body`.", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`unknown_action`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`not_cancellable`: it has acted or finished.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn cancel_action(
    State(state): State<super::OperatorState>,
    operator: Operator,
    id: Result<Path<uuid::Uuid>, PathRejection>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> (Extension<Actor>, Result<Json<ActionReport>, ApiError>) {
    let actor = operator.actor();
    let answer = async {
        let Path(id) = id.map_err(|e| ApiError::Invalid(e.body_text()))?;
        let body = crate::http::body(body, state.max_body)?;
        let request: CancelRequest = crate::http::error::parse_json(&body)?;
        cancel(&state.ctx, id, &actor.to_string(), &request.reason)
            .await
            .map(Json)
    };
    let answer = answer.await;
    (Extension(actor), answer)
}

/// Calls off action `id` for `actor`, with `reason` (required, at most 1024 characters).
pub async fn cancel(
    ctx: &Context,
    id: uuid::Uuid,
    actor: &str,
    reason: &str,
) -> Result<ActionReport, ApiError> {
    if reason.trim().is_empty() || reason.chars().count() > 1024 {
        return Err(ApiError::Invalid(
            "reason is required (at most 1024 characters)".into(),
        ));
    }
    match crate::runner::schedule::cancel(ctx, id, actor, reason).await {
        Ok(Cancelled::Done(done)) => {
            tracing::info!(action_id = %id, actor, "scheduled action cancelled");
            Ok(done.0)
        }
        Ok(Cancelled::Unknown) => Err(ApiError::UnknownAction(id.to_string())),
        Ok(Cancelled::Finished(status)) => Err(ApiError::NotCancellable(format!(
            "it has finished ({status})"
        ))),
        Ok(Cancelled::Started) => Err(ApiError::NotCancellable(
            "it has begun acting on a target".into(),
        )),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}
