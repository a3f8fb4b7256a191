//! `GET /v1/sessions`: who is connected, across targets, with filters.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::error::ApiError;
use super::operator::Operator;
use super::{AppState, RequestMeta};
use crate::resolve;
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
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    query: Result<Query<SessionsQuery>, QueryRejection>,
) -> Result<Json<SessionsReport>, ApiError> {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return Err(state
                .reject(&meta, &operator.actor(), ApiError::Invalid(e.body_text()))
                .await);
        }
    };
    let filter = SessionFilter {
        login: q.login,
        database: q.database,
        application_name: q.application_name,
        client_addr: q.client_addr,
        started_before: q.started_before,
        started_after: q.started_after,
    };
    // Unknown targets and names no chosen target could hold are refused before any target
    // is asked.
    if let Err(e) = resolve::session_filter(&state.ctx.config, q.target.as_deref(), &filter) {
        return Err(state.reject(&meta, &operator.actor(), e.into()).await);
    }
    let timeout = state.ctx.config.termination.timeout;
    Ok(Json(
        state
            .ctx
            .targets
            .sessions(q.target.as_deref(), &filter, timeout)
            .await,
    ))
}
