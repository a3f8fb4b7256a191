//! `GET /metrics`: what [`crate::telemetry`] records, in the Prometheus text format, rendered
//! by `metrics-exporter-prometheus` from an axum route. On `server.metrics_listen` it asks
//! for no token ([`open_router`]); on the operator listener it asks for a token of
//! `metrics.tokens_sha256` ([`guarded_router`]), never an operator's.

use std::sync::{Arc, OnceLock};

use axum::Extension;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Actor;
use super::error::ApiError;
use super::keys::{HashedKeys, bearer_token};
use crate::config::MetricsConfig;
use crate::telemetry;

/// The exposition format's content type (text format 0.0.4).
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The process's recorder handle: the recorder is global to the process, so every server in
/// it (tests run several) records into and renders the same one.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder on first call, with every histogram's buckets (so none is
/// rendered as a summary), describes every metric, and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, buckets) in telemetry::HISTOGRAMS {
                // Only an empty bucket list is refused, and none is (telemetry's tests).
                builder = builder
                    .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
                    .expect("histogram buckets are not empty");
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => telemetry::describe(),
                // Only when sever is embedded in a process that installed its own.
                Err(e) => tracing::warn!(error = %e, "another metrics recorder is installed: \
                    GET /metrics shows nothing of sever's"),
            }
            handle
        })
        .clone()
}

/// Who may scrape, and what they get.
#[derive(Clone)]
struct Scrape {
    handle: PrometheusHandle,
    /// `None`: no token asked (the metrics listener).
    tokens: Option<Arc<HashedKeys<()>>>,
    /// Cancelled by the first scrape let in, which starts the collector.
    scraped: CancellationToken,
}

/// `GET /metrics` without a token, for `server.metrics_listen`; the first scrape cancels
/// `scraped`.
pub fn open_router(handle: PrometheusHandle, scraped: CancellationToken) -> Router {
    router(Scrape {
        handle,
        tokens: None,
        scraped,
    })
}

/// `GET /metrics` behind a token of `metrics.tokens_sha256`, for the operator listener:
/// without one configured it refuses every call. The first scrape let in cancels `scraped`.
pub fn guarded_router(
    handle: PrometheusHandle,
    config: &MetricsConfig,
    scraped: CancellationToken,
) -> Router {
    let entries = config
        .tokens_sha256
        .iter()
        .filter_map(|hash| {
            let mut bytes = [0u8; 32];
            // Validated with the config: 64 hex characters.
            hex::decode_to_slice(hash.to_ascii_lowercase(), &mut bytes).ok()?;
            Some(((), bytes))
        })
        .collect();
    router(Scrape {
        handle,
        tokens: Some(Arc::new(HashedKeys::new(entries))),
        scraped,
    })
}

fn router(scrape: Scrape) -> Router {
    routes().split_for_parts().0.with_state(scrape)
}

/// `GET /metrics`, registered with its OpenAPI description (for the document only: the
/// state is private, so this says what the route is, not how it is built).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

fn routes() -> OpenApiRouter<Scrape> {
    OpenApiRouter::new().routes(routes!(get_metrics))
}

/// The current metrics, once the token (where one is asked) checks out; a refused scrape
/// is recorded like any refused request, by `anonymous`.
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    security(("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format.", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "`missing_token` or `invalid_token` (on the operator listener).", body = crate::http::openapi::ErrorBody),
    ))]
async fn get_metrics(State(scrape): State<Scrape>, headers: HeaderMap) -> Response {
    if let Some(tokens) = &scrape.tokens {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        let refused = match token {
            None => Some(ApiError::MissingToken),
            Some(token) if tokens.find(token.as_bytes()).is_none() => Some(ApiError::InvalidToken),
            Some(_) => None,
        };
        if let Some(error) = refused {
            return (Extension(Actor::Anonymous), error).into_response();
        }
    }
    scrape.scraped.cancel();
    telemetry::refresh();
    let body = scrape.handle.render();
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
