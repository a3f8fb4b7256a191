//! HTTP intake: signed rotation events, the operator API and health checks.

mod actions;
mod aws;
pub mod error;
mod eventbridge;
mod events;
pub mod fuzz;
mod health;
pub mod operator;
pub mod rejections;
mod revocations;
pub mod server;
mod sessions;
pub mod sns;
pub mod vault;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use self::error::{ApiError, error_body};
use self::operator::Operators;
use self::sns::{SnsHttp, SnsVerifier};
use self::webhook::{SecretError, Verifier};
use crate::audit::{Entry, Kind};
use crate::config::ConfigError;
use crate::context::Context;
use crate::queue::{Submission, Submitted};
use crate::resolve::Plan;
use crate::resolve::aws::{SecretsManager, mapped_secrets};
use crate::resolve::vault::Vault;
use secrecy::ExposeSecret;
use sha2::Digest;

/// The AWS intake's authentication and lookups.
struct AwsIntake {
    /// Present when a credential is an AWS secret.
    secrets_manager: Option<SecretsManager>,
    /// SHA-256 of each accepted EventBridge API key.
    api_keys: Vec<[u8; 32]>,
    api_key_header: HeaderName,
    sns: SnsVerifier,
}

impl AwsIntake {
    async fn new(
        config: &crate::config::Config,
        sns_http: Arc<dyn SnsHttp>,
    ) -> Result<Self, ConfigError> {
        let eventbridge = &config.aws.eventbridge;
        let api_keys = eventbridge
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let key = key.load(&format!("aws.eventbridge.api_keys[{i}]"))?;
                Ok(sha2::Sha256::digest(key.expose_secret().as_bytes()).into())
            })
            .collect::<Result<_, ConfigError>>()?;
        let secrets_manager = if mapped_secrets(config).is_empty() {
            None
        } else {
            Some(SecretsManager::from_config(&config.aws).await?)
        };
        Ok(Self {
            secrets_manager,
            api_keys,
            // Validated with the config.
            api_key_header: HeaderName::from_bytes(eventbridge.header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-sever-api-key")),
            sns: SnsVerifier::new(sns_http),
        })
    }
}

/// Why the intake could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A signing secret could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A signing secret is malformed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The Vault client could not be set up.
    #[error(transparent)]
    Vault(#[from] crate::resolve::vault::VaultError),
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    ctx: Arc<Context>,
    verifier: Arc<Verifier>,
    aws: Arc<AwsIntake>,
    vault: Option<Arc<Vault>>,
    vault_status: Arc<vault::subscriber::Status>,
    operators: Arc<Operators>,
    /// Refusals of the current window, for the audit trail.
    rejections: Arc<rejections::Rejections>,
    max_body: usize,
}

impl AppState {
    /// Loads the signing secrets, API keys and operators; actions run on `tracker` so
    /// shutdown can wait; SNS certificates and confirmations go through `sns_http`.
    pub async fn new(ctx: Arc<Context>, sns_http: Arc<dyn SnsHttp>) -> Result<Self, IntakeError> {
        let config = &ctx.config;
        let verifier = Verifier::new(&config.webhook_secrets()?, config.webhooks.tolerance)?;
        let aws = AwsIntake::new(config, sns_http).await?;
        let vault = match &config.vault {
            Some(v) => Some(Vault::connect(v).await?),
            None => None,
        };
        Ok(Self {
            aws: Arc::new(aws),
            vault,
            vault_status: Arc::default(),
            verifier: Arc::new(verifier),
            operators: Arc::new(Operators::new(&config.operators)),
            rejections: Arc::default(),
            max_body: config.server.max_body_bytes,
            ctx,
        })
    }

    /// Audits a refused request (why, from where) and hands the error back for the response.
    /// Beyond a burst per client and code it is only counted, for the window's summary
    /// (see [`rejections`]), so a flood costs no write per request.
    async fn reject(&self, meta: &RequestMeta, actor: &str, error: ApiError) -> ApiError {
        let (status, code) = error.status_and_code();
        let record =
            self.rejections
                .observe(meta, actor, code, status.as_u16(), chrono::Utc::now());
        if !record {
            tracing::debug!(remote = %meta.remote, path = %meta.path, code, error = %error, "request rejected (counted)");
            return error;
        }
        tracing::warn!(remote = %meta.remote, path = %meta.path, code, error = %error, "request rejected");
        let entry = Entry::new(
            Kind::RequestRejected,
            actor,
            None,
            json!({
                "status": status.as_u16(),
                "code": code,
                "count": 1,
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

    /// Stores the plan with its idempotency claims and the `event.accepted` record, in one
    /// transaction; the queue then carries it out. A duplicate claim is refused (a replay) or
    /// reported as [`Accepted::Duplicate`] (the same event delivered another way), as the
    /// claim says. Nothing is accepted unless all of it is stored.
    async fn accept_plan(
        &self,
        meta: &RequestMeta,
        actor: &str,
        claims: Vec<Claim>,
        plan: Plan,
        accepted: serde_json::Value,
    ) -> Result<Accepted, ApiError> {
        let action_id = plan.action_id;
        let submission = Submission {
            plan,
            actor: actor.to_owned(),
            claims: claims.iter().map(|c| c.key.clone()).collect(),
            before: vec![Entry::new(
                Kind::EventAccepted,
                actor,
                Some(action_id),
                accepted.clone(),
            )],
            retry_for: None,
        };
        match self.ctx.queue.submit(&self.ctx.audit, &submission).await {
            Ok(Submitted::Accepted(action_id)) => {
                tracing::info!(%action_id, actor, "event accepted");
                Ok(Accepted::Started(action_id))
            }
            Ok(Submitted::Duplicate { index, action_id }) => {
                let claim = &claims[index];
                if !claim.acknowledge_duplicate {
                    return Err(self
                        .reject(meta, actor, ApiError::Replayed { action_id })
                        .await);
                }
                let entry = Entry::new(
                    Kind::EventDuplicate,
                    actor,
                    None,
                    json!({"key": claim.key, "first_action_id": action_id, "event": accepted}),
                );
                self.ctx
                    .audit
                    .append(entry)
                    .await
                    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
                Ok(Accepted::Duplicate(action_id))
            }
            Err(e) => Err(ApiError::Unavailable(e.to_string())),
        }
    }

    /// [`Self::accept_plan`], answered over HTTP.
    async fn accept(
        &self,
        meta: &RequestMeta,
        actor: &str,
        claims: Vec<Claim>,
        plan: Plan,
        accepted: serde_json::Value,
        wait: bool,
    ) -> Result<Response, ApiError> {
        let accepted = self
            .accept_plan(meta, actor, claims, plan, accepted)
            .await?;
        self.respond(accepted, wait).await
    }

    /// `202` with the action id, or with `wait` the finished report (`202` with status
    /// `running` if it does not finish in time); a duplicate is `200` with the first
    /// action's id.
    async fn respond(&self, accepted: Accepted, wait: bool) -> Result<Response, ApiError> {
        match accepted {
            Accepted::Duplicate(first) => {
                let body = json!({"status": "duplicate", "action_id": first});
                Ok((StatusCode::OK, Json(body)).into_response())
            }
            Accepted::Started(action_id) if !wait => Ok(running(action_id, "accepted")),
            Accepted::Started(action_id) => self.finished(action_id).await,
        }
    }

    /// The finished report of `action_id`, waiting for it within the request's time limit;
    /// `202 {"status": "running"}` if it is still running then.
    async fn finished(&self, action_id: uuid::Uuid) -> Result<Response, ApiError> {
        // Leave time to answer before the request timeout cuts the connection.
        let budget = self.ctx.config.server.request_timeout.mul_f64(0.9);
        match self.ctx.queue.wait(action_id, budget).await {
            Ok(Some(report)) => Ok(Json(report).into_response()),
            Ok(None) => Ok(running(action_id, "running")),
            Err(e) => Err(ApiError::Unavailable(e.to_string())),
        }
    }

    /// Audits an event that needs nothing done.
    async fn note(
        &self,
        actor: &str,
        kind: Kind,
        reason: &str,
        mut detail: serde_json::Value,
    ) -> Result<(), ApiError> {
        detail["reason"] = json!(reason);
        let entry = Entry::new(kind, actor, None, detail);
        self.ctx
            .audit
            .append(entry)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        tracing::info!(actor, kind = kind.as_str(), %reason, "event needs no action");
        Ok(())
    }

    /// Audits an event that needs nothing done and answers `200` with `status` and `reason`.
    async fn acknowledge(
        &self,
        actor: &str,
        kind: Kind,
        status: &str,
        reason: String,
        detail: serde_json::Value,
    ) -> Result<Response, ApiError> {
        self.note(actor, kind, &reason, detail).await?;
        Ok(status_response(status, &reason))
    }
}

/// `200 {"status": …, "reason": …}` for events that need no action.
fn status_response(status: &str, reason: &str) -> Response {
    (
        StatusCode::OK,
        Json(json!({"status": status, "reason": reason})),
    )
        .into_response()
}

/// `202` for a stored action: accepted (or still running) and where to follow it.
fn running(action_id: uuid::Uuid, status: &str) -> Response {
    let body = json!({
        "action_id": action_id,
        "status": status,
        "poll": format!("/v1/actions/{action_id}"),
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// What became of an accepted event.
pub enum Accepted {
    /// The action is stored and will be carried out.
    Started(uuid::Uuid),
    /// The same event was acted on before, as this action.
    Duplicate(String),
}

/// An idempotency key to take before acting, and what a duplicate means.
#[derive(Debug, Clone)]
pub struct Claim {
    key: String,
    /// `true`: a duplicate is the same event delivered again another way (acknowledge it);
    /// `false`: a duplicate is a replay (refuse it).
    acknowledge_duplicate: bool,
}

impl Claim {
    /// A key whose duplicate is refused as a replay.
    pub fn reject(key: String) -> Self {
        Self {
            key,
            acknowledge_duplicate: false,
        }
    }

    /// A key whose duplicate is acknowledged as already done.
    pub fn acknowledge(key: String) -> Self {
        Self {
            key,
            acknowledge_duplicate: true,
        }
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

impl AppState {
    /// The request body, or its refusal (too large, unreadable), audited.
    async fn body(
        &self,
        meta: &RequestMeta,
        actor: &str,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Bytes, ApiError> {
        match body {
            Ok(body) => Ok(body),
            Err(rejection) => {
                let error = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge(self.max_body)
                } else {
                    ApiError::Body(rejection.body_text())
                };
                Err(self.reject(meta, actor, error).await)
            }
        }
    }
}

/// Gives framework-generated errors (404, 405, timeouts) the same JSON shape as ours, and
/// announces the end of a connection whose request body is left unread.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    // A body refused for its size, or cut off by the request timeout (the one non-JSON
    // 503), is not read to its end, so hyper closes the connection after the response. Unless
    // the response says so, the client pools the connection and its next request on it fails.
    let body_unread = status == StatusCode::PAYLOAD_TOO_LARGE
        || (status == StatusCode::SERVICE_UNAVAILABLE && !is_json);
    let mut response = error_json(response, status, is_json);
    if body_unread {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// `response` in the JSON error shape, unless it already is JSON or no error.
fn error_json(response: Response, status: StatusCode, is_json: bool) -> Response {
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

impl AppState {
    /// Writes the window's counted refusals as summary records and starts a new window.
    pub async fn flush_rejections(&self) {
        let summaries = self.rejections.drain();
        if summaries.is_empty() {
            return;
        }
        for summary in &summaries {
            // Also in the log, so the counts survive a store that cannot take them.
            tracing::warn!(actor = %summary.actor, detail = %summary.detail, "requests rejected");
        }
        if let Err(e) = self.ctx.audit.append_all(summaries).await {
            tracing::error!(error = %e, "could not audit the summary of rejected requests");
        }
    }

    /// Flushes the counted refusals every [`rejections::WINDOW`] until `stop` is cancelled.
    pub async fn flush_rejections_periodically(self, stop: CancellationToken) {
        let mut every = tokio::time::interval_at(
            tokio::time::Instant::now() + rejections::WINDOW,
            rejections::WINDOW,
        );
        loop {
            // Only the wait is cancelled: a flush under way finishes.
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => self.flush_rejections().await,
            }
        }
    }
}

/// Starts the Vault token keeper, event subscriber and static-role watcher, as configured;
/// they end when `stop` is cancelled.
pub fn spawn_background(state: &AppState, stop: &CancellationToken) {
    if let Some(client) = &state.vault {
        tokio::spawn(client.clone().keep_token_alive(stop.clone()));
    }
    if let Some(config) = &state.ctx.config.vault {
        if config.subscriber.enabled {
            tokio::spawn(vault::subscriber::run(state.clone(), stop.clone()));
        }
        // The watcher's first pass, at once, checks the configured roles and mounts exist.
        match &config.watcher {
            Some(watcher) => {
                tokio::spawn(vault::watcher::run(
                    state.clone(),
                    watcher.interval,
                    stop.clone(),
                ));
            }
            None => {
                tokio::spawn(vault::watcher::verify_at_start(state.clone(), stop.clone()));
            }
        }
    }
}

/// The HTTP application with every route: what a single listener serves.
pub fn router(state: AppState) -> Router {
    finish(
        health_routes()
            .merge(intake_routes())
            .merge(operator_routes()),
        state,
    )
}

/// The event intake and health checks: what `server.listen` serves when the operator API
/// has a listener of its own.
pub fn intake_router(state: AppState) -> Router {
    finish(health_routes().merge(intake_routes()), state)
}

/// The operator API and health checks: what `server.operator_listen` serves.
pub fn operator_router(state: AppState) -> Router {
    finish(health_routes().merge(operator_routes()), state)
}

/// Liveness and readiness, answered on every listener so probes can reach either port.
fn health_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
}

/// Signed events from rotation systems: the routes that face senders.
fn intake_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/events", post(events::post_event))
        .route("/v1/events/aws", post(aws::post_aws_event))
        .route("/v1/events/vault", post(vault::post_vault_event))
}

/// Operator-authenticated routes (revocations, sessions; actions go here too): the routes
/// that are kept off the intake listener when the two are split.
fn operator_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/revocations", post(revocations::post_revocation))
        .route("/v1/sessions", get(sessions::get_sessions))
        .route("/v1/actions/{id}", get(actions::get_action))
}

/// The layers every listener shares: body limit, request timeout, JSON errors, tracing.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    let timeout = state.ctx.config.server.request_timeout;
    let max_body = state.max_body;
    routes
        // axum's limit rather than tower-http's: it surfaces as an extractor rejection, so
        // the handler can audit the refusal and answer in the common JSON shape.
        .layer(DefaultBodyLimit::max(max_body))
        // Runs around the handler, so it also bounds reading the body: a client trickling
        // one is answered 503 and disconnected when it expires.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
