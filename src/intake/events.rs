//! `POST /v1/events`: the generic signed rotation event.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, parse_json};
use super::{AppState, RequestMeta, body_error};
use crate::audit::{Entry, Kind};
use crate::resolve::{self, RotationEvent};
use crate::store::Claim;

/// `?wait=true` returns the finished result instead of `202 Accepted`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    #[serde(default)]
    wait: bool,
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
    let reject = |e| state.reject(&meta, ACTOR, e);
    let body = match body {
        Ok(body) => body,
        Err(e) => return Err(reject(body_error(e, state.max_body)).await),
    };
    let verified_at = Utc::now();
    // Signature first, on the raw bytes: nothing unauthenticated is parsed.
    let delivery = match state
        .verifier
        .verify(&headers, &body, verified_at.timestamp())
    {
        Ok(delivery) => delivery,
        Err(e) => return Err(reject(e.into()).await),
    };
    let wait = match query {
        Ok(Query(q)) => q.wait,
        Err(e) => return Err(reject(ApiError::Invalid(e.body_text())).await),
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
    let action_id = plan.action_id;
    match state
        .ctx
        .store
        .claim_delivery(&delivery.id, &action_id.to_string(), verified_at)
        .await
    {
        Ok(Claim::Claimed) => {}
        Ok(Claim::Duplicate { action_id }) => {
            return Err(reject(ApiError::Replayed { action_id }).await);
        }
        Err(e) => return Err(ApiError::Unavailable(e.to_string())),
    }
    let accepted = Entry::new(
        Kind::EventAccepted,
        ACTOR,
        Some(action_id),
        json!({
            "webhook_id": delivery.id,
            "webhook_timestamp": delivery.timestamp,
            "remote_addr": meta.remote,
            "event": event,
        }),
    );
    if let Err(e) = state.ctx.audit.append(accepted).await {
        // Unrecorded means unaccepted: free the id so the sender's retry is processed.
        if let Err(release) = state.ctx.store.release_delivery(&delivery.id).await {
            tracing::error!(error = %release, "could not release webhook-id after audit failure");
        }
        return Err(ApiError::Unavailable(e.to_string()));
    }
    tracing::info!(%action_id, credential = %event.credential, kind = ?event.kind, "rotation event accepted");
    let running = state.start(plan, ACTOR.to_owned());
    if !wait {
        let body = json!({"action_id": action_id, "status": "accepted"});
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    match running.await {
        Ok(Ok(report)) => Ok(Json(report).into_response()),
        Ok(Err(e)) => Err(ApiError::Unavailable(e.to_string())),
        Err(e) => Err(ApiError::Unavailable(format!(
            "action {action_id} aborted: {e}"
        ))),
    }
}
