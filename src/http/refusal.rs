//! Refused requests, recorded in one place: handlers return `Err(ApiError)`, whose response
//! carries a [`Refusal`] extension (and the handler's [`Actor`] one), and
//! [`record_refusals`] — one middleware around every route — reads it with the request's
//! [`RequestMeta`] and audits it (coalesced by [`super::rejections`]) and logs it. Event
//! sources that are not HTTP requests (the Vault subscriber and watcher) call
//! [`Refusals::record`] themselves.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::error::Refusal;
use super::rejections::{self, Rejections};
use super::{Actor, RequestMeta};
use crate::audit::{Entry, Kind};
use crate::context::Context;

/// The refusals of the current window and where they are recorded.
pub struct Refusals {
    ctx: Arc<Context>,
    /// Refusals of the current window, for the audit trail.
    rejections: Rejections,
}

impl Refusals {
    /// Records into `ctx`'s audit trail.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            rejections: Rejections::default(),
        }
    }

    /// Audits a refused request (why, from where). Beyond a burst per client and code it is
    /// only counted, for the window's summary (see [`rejections`]), so a flood costs no write
    /// per request.
    pub async fn record(&self, meta: &RequestMeta, actor: &Actor, refusal: &Refusal) {
        let Refusal {
            status,
            code,
            message: error,
        } = refusal;
        let (status, code) = (*status, *code);
        // Counted before the coalescing below: a flood shows in full in the metrics.
        crate::telemetry::refused(code);
        if let Some(source) = actor.event_source() {
            crate::telemetry::event_received(source, "refused");
        }
        let actor = actor.to_string();
        let record =
            self.rejections
                .observe(meta, &actor, code, status.as_u16(), chrono::Utc::now());
        if !record {
            tracing::debug!(remote = %meta.remote, path = %meta.path, code, error = %error, "request rejected (counted)");
            return;
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
                "message": error,
                "remote_addr": meta.remote,
                "method": meta.method,
                "path": meta.path,
                "webhook_id": meta.webhook_id,
            }),
        );
        if let Err(e) = self.ctx.audit.append(entry).await {
            tracing::error!(error = %e, "could not audit a rejected request");
        }
    }

    /// Writes the window's counted refusals as summary records and starts a new window.
    pub async fn flush(&self) {
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
    pub async fn flush_periodically(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval_at(
            tokio::time::Instant::now() + rejections::WINDOW,
            rejections::WINDOW,
        );
        loop {
            // Only the wait is cancelled: a flush under way finishes.
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => self.flush().await,
            }
        }
    }
}

/// The middleware: records the refusal an error response carries, by the actor the handler
/// (or the operator extractor) attached, `anonymous` if none.
pub async fn record_refusals(
    State(refusals): State<Arc<Refusals>>,
    request: Request,
    next: Next,
) -> Response {
    let meta = RequestMeta::new(
        request.extensions(),
        request.headers(),
        request.method(),
        request.uri(),
    );
    let mut response = next.run(request).await;
    if let Some(refusal) = response.extensions_mut().remove::<Refusal>() {
        let actor = response
            .extensions_mut()
            .remove::<Actor>()
            .unwrap_or(Actor::Anonymous);
        refusals.record(&meta, &actor, &refusal).await;
    } else if response.status().is_server_error()
        && let Some(source) = response
            .extensions()
            .get::<Actor>()
            .and_then(Actor::event_source)
    {
        // An event sever could not take (its store unavailable): not a refusal, still counted.
        crate::telemetry::event_received(source, "failed");
    }
    response
}
