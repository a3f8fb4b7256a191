//! HTTP intake: signed rotation events, the operator API and health checks.

pub mod error;
mod events;
mod health;
pub mod operator;
mod revocations;
mod sessions;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use self::error::{ApiError, error_body};
use self::operator::Operators;
use self::webhook::{SecretError, Verifier};
use crate::audit::{Entry, Kind};
use crate::config::ConfigError;
use crate::context::Context;
use crate::pipeline::{self, ActionReport, PipelineError};
use crate::resolve::Plan;

/// Why the intake could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A signing secret could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A signing secret is malformed.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    ctx: Arc<Context>,
    verifier: Arc<Verifier>,
    operators: Arc<Operators>,
    tracker: TaskTracker,
    max_body: usize,
}

impl AppState {
    /// Loads the signing secrets and operators; actions run on `tracker` so shutdown can wait.
    pub fn new(ctx: Arc<Context>, tracker: TaskTracker) -> Result<Self, IntakeError> {
        let config = &ctx.config;
        let verifier = Verifier::new(&config.webhook_secrets()?, config.webhooks.tolerance)?;
        Ok(Self {
            verifier: Arc::new(verifier),
            operators: Arc::new(Operators::new(&config.operators)),
            max_body: config.server.max_body_bytes,
            tracker,
            ctx,
        })
    }

    /// Audits a refused request (why, from where) and hands the error back for the response.
    async fn reject(&self, meta: &RequestMeta, actor: &str, error: ApiError) -> ApiError {
        let (status, code) = error.status_and_code();
        tracing::warn!(remote = %meta.remote, path = %meta.path, code, error = %error, "request rejected");
        let entry = Entry::new(
            Kind::RequestRejected,
            actor,
            None,
            json!({
                "status": status.as_u16(),
                "code": code,
                "message": error.to_string(),
                "remote_addr": meta.remote,
                "method": meta.method,
                "path": meta.path,
                "webhook_id": meta.webhook_id,
            }),
        );
        if let Err(e) = self.ctx.audit.append(entry).await {
            tracing::error!(error = %e, "could not audit a rejected request");
        }
        error
    }

    /// Runs a plan in the background; the handle yields the report. The action completes
    /// even if the caller goes away.
    fn start(&self, plan: Plan, actor: String) -> JoinHandle<Result<ActionReport, PipelineError>> {
        let ctx = self.ctx.clone();
        self.tracker
            .spawn(async move { pipeline::execute(&ctx, plan, &actor).await })
    }
}

/// Where a request came from, for rejection records.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    remote: String,
    method: String,
    path: String,
    /// The claimed `webhook-id`, if printable and short; untrusted until verified.
    webhook_id: Option<String>,
}

impl RequestMeta {
    fn from_parts(parts: &Parts) -> Self {
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(
                || "unknown".to_owned(),
                |ConnectInfo(addr)| addr.to_string(),
            );
        let webhook_id = parts
            .headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .filter(|id| id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned);
        Self {
            remote,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            webhook_id,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_parts(parts))
    }
}

fn body_error(rejection: BytesRejection, max: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(max)
    } else {
        ApiError::Body(rejection.body_text())
    }
}

/// Gives framework-generated errors (404, 405, timeouts) the same JSON shape as ours.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let message = status.canonical_reason().unwrap_or("error");
    error_body(status, code, message)
}

/// The HTTP application.
pub fn router(state: AppState) -> Router {
    let timeout = state.ctx.config.server.request_timeout;
    let max_body = state.max_body;
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/events", post(events::post_event))
        .route("/v1/revocations", post(revocations::post_revocation))
        .route("/v1/sessions", get(sessions::get_sessions))
        // axum's limit rather than tower-http's: it surfaces as an extractor rejection, so
        // the handler can audit the refusal and answer in the common JSON shape.
        .layer(DefaultBodyLimit::max(max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
