//! The HTTP/1 accept loop: a header-read deadline, a cap on open connections, and a graceful
//! stop. `axum::serve` offers neither the deadline nor the cap, so this does what it does
//! internally (a hyper connection per accepted socket) with both added.
//!
//! What bounds a client:
//! - headers: `header_read_timeout`, from the connection's first byte being awaited (so an
//!   idle connection, or an idle keep-alive between requests, is closed after it too);
//! - body and handling: the router's request timeout, which runs around the handler and
//!   therefore also around reading the body;
//! - how many: a cap per listener, sized at start to fit the open-file limit. At the cap the loop stops accepting, so new
//!   connections wait in the kernel's accept queue (and, once it is full, the client's SYN
//!   retries) until a connection closes. Waiting rather than refusing keeps a burst of
//!   rotation events from being turned into errors, and the two deadlines above bound how
//!   long any connection can hold a slot, so a waiting client is served in bounded time.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long to pause accepting after a resource error (e.g. out of file descriptors), so
/// the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Per-connection limits, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deadline for a request's headers (and for an idle connection's next request).
    pub header_read_timeout: Duration,
    /// Connections served at once on one listener, sized to the open-file limit (`crate::fds`).
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stop` is cancelled; then stops accepting, lets each
/// connection finish the request it is serving, and returns once all are closed. Handlers
/// see the peer address as [`ConnectInfo<SocketAddr>`].
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        // Take a slot before accepting, so that at the cap connections wait in the backlog.
        let permit = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
        };
        let (stream, remote) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e, &stop).await;
                    continue;
                }
            },
        };
        // Responses are small and written whole; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                request
            });
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let stop = stop.clone();
        connections.spawn(async move {
            let _slot = permit;
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    // Closes an idle connection now, a busy one after its response.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                // Clients going away and slow clients cut off are routine, not faults.
                tracing::debug!(%remote, error = %e, "connection closed");
            }
        });
    }
    // Closing the socket makes the kernel refuse further connections while the rest finish.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Handles a failed `accept`: a connection that died in the queue is skipped; anything else
/// (typically out of file descriptors) is logged and accepting pauses briefly.
async fn accept_failed(error: &io::Error, stop: &CancellationToken) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %error, "accept failed; pausing");
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
    }
}
