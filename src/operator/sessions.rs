//! `GET /v1/sessions` and `sever sessions`: who is connected, across targets, with filters.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::auth::Operator;
use crate::config::Config;
use crate::context::Context;
use crate::http::Actor;
use crate::http::error::ApiError;
use crate::resolve::{self, ResolveError};
use crate::terminate::{SessionFilter, SessionsReport};

/// Query parameters; all optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    target: Option<String>,
    login: Option<String>,
    database: Option<String>,
    application_name: Option<String>,
    client_addr: Option<String>,
    started_before: Option<DateTime<Utc>>,
    started_after: Option<DateTime<Utc>>,
}

/// Lists sessions on one target or all of them.
pub async fn get_sessions(
    State(ctx): State<Arc<Context>>,
    operator: Operator,
    query: Result<Query<SessionsQuery>, QueryRejection>,
) -> (Extension<Actor>, Result<Json<SessionsReport>, ApiError>) {
    let answer = async {
        let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
        let filter = SessionFilter {
            login: q.login,
            database: q.database,
            application_name: q.application_name,
            client_addr: q.client_addr,
            started_before: q.started_before,
            started_after: q.started_after,
        };
        check(&ctx.config, q.target.as_deref(), &filter)?;
        Ok(Json(list(&ctx, q.target.as_deref(), &filter).await))
    };
    let answer = answer.await;
    (Extension(operator.actor()), answer)
}

/// Refuses unknown targets and names no chosen target could hold, before any target is
/// asked (the command line checks before it connects anything).
pub fn check(
    config: &Config,
    target: Option<&str>,
    filter: &SessionFilter,
) -> Result<(), ResolveError> {
    resolve::session_filter(config, target, filter)
}

/// The sessions on `target` (or every target) that match `filter`, within the termination
/// timeout; a target that fails is listed among the report's errors.
pub async fn list(ctx: &Context, target: Option<&str>, filter: &SessionFilter) -> SessionsReport {
    let timeout = ctx.config.termination.timeout;
    ctx.targets.sessions(target, filter, timeout).await
}
