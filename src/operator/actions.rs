//! `GET /v1/actions/{id}`: an action's progress and, once finished, its report; and
//! `GET /v1/actions`: the actions, filtered, newest first, a bounded page at a time.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Operator;
use crate::action::Origin;
use crate::context::Context;
use crate::http::Actor;
use crate::http::error::ApiError;
use crate::queue::{ActionFilter, ActionStatus, ActionSummary};

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

/// The most actions one page of `GET /v1/actions` holds.
pub const MAX_PAGE: usize = 500;

/// `GET /v1/actions`'s query: filters, the page size and the cursor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this origin (`event`, `revocation`, `aws`, `vault`, `lock`, `unlock`, `drain`,
    /// `undrain`, `sweep`).
    pub origin: Option<String>,
    /// Only this actor, exactly (`operator:alice`).
    pub actor: Option<String>,
    /// Only `running`, `completed` or `incomplete` actions.
    pub status: Option<String>,
    /// Only actions accepted at or after this moment (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// The previous page's `next`: actions accepted before that one.
    pub before: Option<uuid::Uuid>,
    /// How many (default 50, at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
}

/// One page of actions, newest first, and the cursor of the next page (`null` at the end).
#[derive(Debug, Serialize)]
pub struct ActionPage {
    /// The actions.
    pub actions: Vec<ActionSummary>,
    /// Pass as `before` for the next page.
    pub next: Option<String>,
}

/// Lists actions with filters, newest first, paginated.
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
        && !["running", "completed", "incomplete"].contains(&status.as_str())
    {
        return Err(ApiError::Invalid(format!(
            "status: {status:?} is none of running, completed, incomplete"
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
