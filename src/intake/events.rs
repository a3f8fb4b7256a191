//! `POST /v1/events`: the generic signed rotation event.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::{Claim, Intake, accept};
use crate::http::error::{ApiError, parse_json};
use crate::http::{self, Actor, RequestMeta};
use crate::resolve::{self, RotationEvent};

/// `?wait=true` returns the finished result instead of `202 Accepted`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    #[serde(default)]
    wait: bool,
}

/// Reads `?wait=`; a malformed query is a refusal.
pub fn wait_flag(query: Result<Query<WaitQuery>, QueryRejection>) -> Result<bool, ApiError> {
    query
        .map(|Query(q)| q.wait)
        .map_err(|e| ApiError::Invalid(e.body_text()))
}

/// Verifies, de-duplicates, plans and starts a rotation; see the README for the contract.
#[utoipa::path(post, path = "/v1/events", tag = "intake",
    request_body = crate::resolve::RotationEvent,
    params(("wait" = Option<bool>, Query, description = "Answer with the finished report instead of `202`.")),
    responses(
        (status = 200, description = "Finished (`wait=true`): the report; or a duplicate delivery, or an event that needs nothing done.", body = crate::http::openapi::EventAnswer),
        (status = 202, description = "Accepted: the action and where to follow it (with `wait`, still running; or scheduled).", body = crate::http::openapi::AcceptedBody),
        (status = 401, description = "Standard Webhooks: `missing_header`, `timestamp_out_of_tolerance`, `invalid_signature`.", body = crate::http::openapi::ErrorBody),
        (status = 400, description = "`malformed_json`, `malformed_header` or `unreadable_body`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`replayed_delivery` or `version_not_current`.", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request`, `unknown_credential`, `unknown_target`, `protected_login` and the other refusals of what the event names.", body = crate::http::openapi::ErrorBody),
        (status = 502, description = "Secrets Manager, Vault or SNS could not be asked; nothing was executed.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable` (store, audit trail) or `sns_busy`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn post_event(
    State(intake): State<Intake>,
    meta: RequestMeta,
    query: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> (Extension<Actor>, Result<Response, ApiError>) {
    let answer = event(&intake, &meta, query, &headers, body).await;
    (Extension(Actor::Webhook), answer)
}

async fn event(
    intake: &Intake,
    meta: &RequestMeta,
    query: Result<Query<WaitQuery>, QueryRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = http::body(body, intake.max_body)?;
    let verified_at = Utc::now();
    // Signature first, on the raw bytes: nothing unauthenticated is parsed.
    let delivery = intake
        .verifier
        .verify(headers, &body, verified_at.timestamp())?;
    let wait = wait_flag(query)?;
    let event: RotationEvent = parse_json(&body)?;
    let config = &intake.ctx.config;
    let plan = resolve::event(config, &event, verified_at, config.webhooks.tolerance)?;
    let accepted = json!({
        "webhook_id": delivery.id,
        "webhook_timestamp": delivery.timestamp,
        "remote_addr": meta.remote,
        "event": event,
    });
    let claims = vec![Claim::reject(format!("webhook:{}", delivery.id))];
    let accepted = accept(&intake.ctx, &Actor::Webhook, claims, plan, accepted).await?;
    intake.respond(accepted, wait).await
}
