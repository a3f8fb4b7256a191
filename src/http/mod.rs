//! The HTTP door's plumbing, shared by every area that answers over HTTP: the accept loop
//! ([`server`]), the one JSON error shape ([`error`]), health checks ([`health`]), the
//! recording of refused requests ([`refusal`], coalesced by [`rejections`]), hashed-key
//! checks ([`keys`]), the audit [`actor`], replies ([`reply`]), `GET /metrics`
//! ([`exporter`]) and route assembly ([`app`]).
//!
//! May call: `runner`, `context`, `resolve`, `queue`, `audit`, `store`, `config`.
//! Never `intake` or `operator`: their routers are handed to [`app`] by `lib.rs`.

pub mod actor;
pub mod error;
pub mod exporter;
pub mod health;
pub mod keys;
pub mod openapi;
pub mod refusal;
pub mod rejections;
pub mod reply;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use self::actor::Actor;
use self::error::{ApiError, error_body};
use self::refusal::Refusals;

/// Where a request came from, for refusal records.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The client's address (`ip:port`), or `vault` for what sever fetched from Vault.
    pub remote: String,
    /// The request's method (`WS` for the Vault event subscription).
    pub method: String,
    /// The request's path.
    pub path: String,
    /// The claimed `webhook-id`, if printable and short; untrusted until verified.
    pub webhook_id: Option<String>,
}

impl RequestMeta {
    /// From a request's head.
    pub fn new(
        extensions: &axum::http::Extensions,
        headers: &HeaderMap,
        method: &Method,
        uri: &Uri,
    ) -> Self {
        let remote = extensions.get::<ConnectInfo<SocketAddr>>().map_or_else(
            || "unknown".to_owned(),
            |ConnectInfo(addr)| addr.to_string(),
        );
        let webhook_id = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .filter(|id| id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned);
        Self {
            remote,
            method: method.to_string(),
            path: uri.path().to_owned(),
            webhook_id,
        }
    }

    /// What sever itself read from Vault (`method` `WS` for the event subscription, `GET`
    /// for the watcher), for the records of the events it refuses.
    pub fn from_vault(method: &str, path: String) -> Self {
        Self {
            remote: "vault".into(),
            method: method.into(),
            path,
            webhook_id: None,
        }
    }

    fn from_parts(parts: &Parts) -> Self {
        Self::new(&parts.extensions, &parts.headers, &parts.method, &parts.uri)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_parts(parts))
    }
}

/// The request body, or why it is refused (too large for `max_body`, unreadable).
pub fn body(body: Result<Bytes, BytesRejection>, max_body: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(max_body)
        } else {
            ApiError::Body(rejection.body_text())
        }
    })
}

/// What every listener's routes are wrapped in.
#[derive(Clone)]
pub struct Layers {
    /// `server.request_timeout`.
    pub request_timeout: Duration,
    /// `server.max_body_bytes`.
    pub max_body: usize,
    /// Where refused requests are recorded.
    pub refusals: Arc<Refusals>,
}

/// One listener's application: the areas' `routers` merged, in the layers every listener
/// shares: body limit, refusal records, request timeout, JSON errors, tracing.
pub fn app(routers: impl IntoIterator<Item = Router>, layers: &Layers) -> Router {
    let routes = routers.into_iter().fold(Router::new(), Router::merge);
    routes
        // axum's limit rather than tower-http's: it surfaces as an extractor rejection, so
        // the handler can refuse it in the common JSON shape, and the refusal is recorded.
        .layer(DefaultBodyLimit::max(layers.max_body))
        .layer(axum::middleware::from_fn_with_state(
            layers.refusals.clone(),
            refusal::record_refusals,
        ))
        // Runs around the handler, so it also bounds reading the body: a client trickling
        // one is answered 503 and disconnected when it expires.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            layers.request_timeout,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .layer(TraceLayer::new_for_http())
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
