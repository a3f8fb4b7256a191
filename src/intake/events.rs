//! `POST /v1/events`: the generic signed rotation event.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, parse_json};
use super::{AppState, Claim, RequestMeta};
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
pub async fn post_event(
    State(state): State<AppState>,
    meta: RequestMeta,
    query: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    const ACTOR: &str = "webhook";
    let body = state.body(&meta, ACTOR, body).await?;
    let reject = |e| state.reject(&meta, ACTOR, e);
    let verified_at = Utc::now();
    // Signature first, on the raw bytes: nothing unauthenticated is parsed.
    let delivery = match state
        .verifier
        .verify(&headers, &body, verified_at.timestamp())
    {
        Ok(delivery) => delivery,
        Err(e) => return Err(reject(e.into()).await),
    };
    let wait = match wait_flag(query) {
        Ok(wait) => wait,
        Err(e) => return Err(reject(e).await),
    };
    let event: RotationEvent = match parse_json(&body) {
        Ok(event) => event,
        Err(e) => return Err(reject(e).await),
    };
    let config = &state.ctx.config;
    let plan = match resolve::event(config, &event, verified_at, config.webhooks.tolerance) {
        Ok(plan) => plan,
        Err(e) => return Err(reject(e.into()).await),
    };
    let accepted = json!({
        "webhook_id": delivery.id,
        "webhook_timestamp": delivery.timestamp,
        "remote_addr": meta.remote,
        "event": event,
    });
    let claims = vec![Claim::reject(format!("webhook:{}", delivery.id))];
    state
        .accept(&meta, ACTOR, claims, plan, accepted, wait)
        .await
}
