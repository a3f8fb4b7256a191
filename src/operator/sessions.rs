//! `GET /v1/sessions` and `sever sessions`: who is connected, across targets, with filters.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::{Extension, Json};

use super::auth::Operator;
use crate::config::Config;
use crate::context::Context;
use crate::http::Actor;
use crate::http::error::ApiError;
use crate::resolve::{self, ResolveError};
use crate::select::Selector;
use crate::terminate::listing::{Refused, SessionsReport};

/// What a listing asks for: where, which sessions, and whether to show query text.
#[derive(Debug, Clone, Default)]
pub struct ListingQuery {
    /// Only this target.
    pub target: Option<String>,
    /// Which sessions.
    pub selector: Selector,
    /// Show each session's statement text (it can hold personal data).
    pub include_query: bool,
}

impl ListingQuery {
    /// Reads `?target=…&include_query=true` and the selector's fields (a list field takes
    /// its key repeated: `?logins=a&logins=b`). Unknown keys are refused, never ignored.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut listing = ListingQuery::default();
        let mut rest = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "target" if listing.target.is_none() => listing.target = Some(value.into_owned()),
                "target" => return Err("target: given more than once".into()),
                "include_query" => {
                    listing.include_query = value
                        .parse()
                        .map_err(|_| format!("include_query: {value:?} is not true or false"))?
                }
                _ => {
                    rest.append_pair(&key, &value);
                }
            }
        }
        listing.selector = serde_html_form::from_str(&rest.finish()).map_err(|e| e.to_string())?;
        Ok(listing)
    }
}

/// `GET /v1/sessions`'s query, for the OpenAPI document: [`ListingQuery::parse`] reads it
/// (a list field takes its key repeated).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SessionsParams {
    /// Only this target.
    target: Option<String>,
    /// Show each session's statement text.
    include_query: Option<bool>,
    /// Only these logins.
    logins: Option<Vec<String>>,
    /// Not these logins.
    exclude_logins: Option<Vec<String>>,
    /// Only these databases.
    databases: Option<Vec<String>>,
    /// Not these databases.
    exclude_databases: Option<Vec<String>>,
    /// Only these application names (`*` matches any run of characters).
    application_names: Option<Vec<String>>,
    /// Not these application names.
    exclude_application_names: Option<Vec<String>>,
    /// Only clients in these CIDR blocks.
    client_addrs: Option<Vec<String>>,
    /// Only sessions started before this moment (RFC 3339).
    started_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Only sessions started after this moment (RFC 3339).
    started_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Only sessions in these states.
    states: Option<Vec<crate::select::SessionState>>,
    /// Only sessions idle at least this long (`5m`).
    idle_for: Option<String>,
    /// Only sessions active at least this long.
    active_for: Option<String>,
    /// Only sessions in a transaction at least this long.
    in_transaction_for: Option<String>,
    /// Only these single sessions, `PID@START` with START the session's `backend_start`
    /// exactly as listed (RFC 3339, a `+` sent as `%2B`); `PID` alone on MySQL and MariaDB.
    #[param(example = "12345@2026-12-07T01:02:03.456789Z")]
    sessions: Option<Vec<String>>,
}

/// Lists sessions on one target or all of them.
#[utoipa::path(get,
    path = "/v1/sessions",
    tag = "operator",
    security(("operator_token" = [])),
    params(SessionsParams),
    responses(
        (status = 200, description = "Summaries, sessions, undecided ones and failed targets.", body = SessionsReport),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn get_sessions(
    State(ctx): State<Arc<Context>>,
    operator: Operator,
    RawQuery(query): RawQuery,
) -> (Extension<Actor>, Result<Json<SessionsReport>, ApiError>) {
    let answer = async {
        let q =
            ListingQuery::parse(query.as_deref().unwrap_or_default()).map_err(ApiError::Invalid)?;
        check(&ctx.config, &q)?;
        let report = list(&ctx, &q)
            .await
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        Ok(Json(report))
    };
    let answer = answer.await;
    (Extension(operator.actor()), answer)
}

/// Refuses unknown targets, names no chosen target could hold, and fields a chosen
/// target's engine cannot evaluate, before any target is asked (the command line checks
/// before it connects anything).
pub fn check(config: &Config, q: &ListingQuery) -> Result<(), ResolveError> {
    resolve::selector(config, q.target.as_deref(), &q.selector)
}

/// The sessions on the chosen target (or every target) that the selector selects, within
/// the termination timeout; a target that fails is listed among the report's errors.
pub async fn list(ctx: &Context, q: &ListingQuery) -> Result<SessionsReport, Refused> {
    let timeout = ctx.config.termination.timeout;
    ctx.targets
        .list(q.target.as_deref(), &q.selector, q.include_query, timeout)
        .await
}
