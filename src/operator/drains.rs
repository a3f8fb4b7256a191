//! `POST /v1/drains`, `GET /v1/drains`, `DELETE /v1/drains/{id}` and `sever drain` /
//! `undrain` / `drains`: keep one database clear for a bounded time, then re-open it as it
//! was.
//!
//! A drain is two actions, like a lock: its re-open, stored first and scheduled for `until`
//! (its steps never give up), then the drain itself. Stored in that order, a crash between
//! the two leaves a re-open with nothing to end, never a drain with no re-open.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::{Extension, Json};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::OperatorState;
use super::auth::Operator;
use crate::action::Step;
use crate::context::Context;
use crate::http::error::{ApiError, parse_json};
use crate::http::reply::finished;
use crate::http::{self, Actor};
use crate::queue::{Submission, Submitted};
use crate::resolve::drains::{DrainRequest, drain, undrain_plan};
use crate::store::DrainRow;

/// One drain on one target, as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DrainView {
    /// The drain's id (also its action's).
    pub drain_id: String,
    /// Target id.
    pub target: String,
    /// The database kept clear.
    pub database: String,
    /// When it began.
    pub since: String,
    /// When it ends by itself (`null`: permanent, until lifted).
    pub until: Option<String>,
    /// Why.
    pub reason: String,
    /// Who took it.
    pub actor: String,
    /// `active` or `ended`.
    pub state: String,
    /// When it ended.
    pub ended_at: Option<String>,
    /// What ended it: `expiry`, or the operator who lifted it.
    pub ended_by: Option<String>,
}

impl From<DrainRow> for DrainView {
    fn from(r: DrainRow) -> Self {
        let (ended_at, ended_by) = r.ended.unzip();
        Self {
            drain_id: r.drain_id,
            target: r.target,
            database: r.database,
            since: r.since,
            until: r.until,
            reason: r.reason,
            actor: r.actor,
            state: r.state,
            ended_at,
            ended_by,
        }
    }
}

/// Takes a drain: stores its expiry, then the drain, and answers with the drain's report.
#[utoipa::path(post,
    path = "/v1/drains",
    tag = "operator",
    security(("operator_token" = [])),
    request_body = DrainRequest,
    responses(
        (status = 200, description = "Finished: the drain's report.", body = crate::action::ActionReport),
        (status = 202, description = "Stored, not finished (or scheduled): where to follow it.", body = crate::http::openapi::AcceptedBody),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
        (status = 400, description = "`malformed_json` or `unreadable_body`.", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn post_drain(
    State(state): State<OperatorState>,
    operator: Operator,
    body: Result<Bytes, BytesRejection>,
) -> (Extension<Actor>, Result<Response, ApiError>) {
    let actor = operator.actor();
    let answer = async {
        let body = http::body(body, state.max_body)?;
        let request: DrainRequest = parse_json(&body)?;
        let drain_id = take(&state.ctx, &request, &actor.to_string()).await?;
        tracing::info!(drain_id = %drain_id, operator = %operator.name, database = %request.database,
            target_id = %request.target, "database drain requested");
        crate::http::reply::answered(&state.ctx, drain_id).await
    };
    let answer = answer.await;
    (Extension(actor), answer)
}

/// Plans and stores a drain and its expiry; the drain's id.
pub async fn take(ctx: &Context, request: &DrainRequest, actor: &str) -> Result<Uuid, ApiError> {
    let plans = drain(&ctx.config, request, Utc::now())?;
    if let Some((expiry, due)) = plans.expiry {
        let mut submission = Submission::new(expiry, actor.to_owned());
        submission.due = Some(due);
        submission.never_give_up = true;
        store(ctx, submission).await?;
    }
    store(ctx, Submission::new(plans.drain, actor.to_owned())).await
}

async fn store(ctx: &Context, submission: Submission) -> Result<Uuid, ApiError> {
    match crate::runner::schedule::submit(ctx, submission).await {
        Ok(Submitted::Accepted(id)) => Ok(id),
        Ok(Submitted::Duplicate { action_id, .. }) => Err(ApiError::Unavailable(format!(
            "unexpected duplicate of action {action_id}"
        ))),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

/// `GET /v1/drains?all=true`: the active drains (with `all`, ended ones too).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Also list ended drains.
    #[serde(default)]
    pub all: bool,
}

/// Lists drains, active first.
#[utoipa::path(get,
    path = "/v1/drains",
    tag = "operator",
    security(("operator_token" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "The drains, active first.", body = Vec<DrainView>),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn get_drains(
    State(state): State<OperatorState>,
    operator: Operator,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> (Extension<Actor>, Result<Json<Vec<DrainView>>, ApiError>) {
    let answer = async {
        let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
        list(&state.ctx, None, q.all).await.map(Json)
    };
    let answer = answer.await;
    (Extension(operator.actor()), answer)
}

/// The drains (of one id, if given), active ones only unless `all`.
pub async fn list(
    ctx: &Context,
    drain_id: Option<&str>,
    all: bool,
) -> Result<Vec<DrainView>, ApiError> {
    let rows = ctx
        .store
        .drains_where(drain_id, !all)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(rows.into_iter().map(DrainView::from).collect())
}

/// `DELETE /v1/drains/{id}?reason=…`: why it is lifted early.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LiftQuery {
    /// Why; required, recorded in the audit trail.
    pub reason: String,
}

/// Lifts a drain before its expiry; answers with the report of its end.
#[utoipa::path(delete,
    path = "/v1/drains/{id}",
    tag = "operator",
    security(("operator_token" = [])),
    params(("id" = Uuid, Path, description = "The drain."), LiftQuery),
    responses(
        (status = 200, description = "Lifted: the report of its end.", body = crate::action::ActionReport),
        (status = 202, description = "Stored, not finished (or scheduled): where to follow it.", body = crate::http::openapi::AcceptedBody),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`unknown_drain`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn delete_drain(
    State(state): State<OperatorState>,
    operator: Operator,
    id: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<LiftQuery>, axum::extract::rejection::QueryRejection>,
) -> (Extension<Actor>, Result<Response, ApiError>) {
    let actor = operator.actor();
    let answer = async {
        let Path(id) = id.map_err(|e| ApiError::Invalid(e.body_text()))?;
        let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
        let action = lift(&state.ctx, id, &q.reason, &actor.to_string()).await?;
        finished(&state.ctx, action).await
    };
    let answer = answer.await;
    (Extension(actor), answer)
}

/// Stores the end of drain `id` on every target where it is active; the action's id.
pub async fn lift(ctx: &Context, id: Uuid, reason: &str, actor: &str) -> Result<Uuid, ApiError> {
    if reason.trim().is_empty() {
        return Err(ApiError::Invalid("reason is required".into()));
    }
    let active = list(ctx, Some(&id.to_string()), false).await?;
    let Some(first) = active.first() else {
        return Err(ApiError::UnknownDrain(id.to_string()));
    };
    let database = first.database.clone();
    let targets: BTreeSet<String> = active.iter().map(|l| l.target.clone()).collect();
    let steps = targets
        .into_iter()
        .map(|target| Step {
            protected: ctx.config.protected_on(&target),
            logins: Vec::new(),
            target,
        })
        .collect();
    let plan = undrain_plan(id, &database, steps, actor, reason);
    let mut submission = Submission::new(plan, actor.to_owned());
    submission.never_give_up = true;
    store(ctx, submission).await
}
