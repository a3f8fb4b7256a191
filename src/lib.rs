//! sever: terminates the database sessions that outlive a credential rotation or revocation.
//!
//! Three doors: [`intake`] (event sources: signed webhooks, AWS, Vault), [`operator`]
//! (revocations, sessions, actions; called by the operator API and the [`cli`]) and the
//! [`cli`]; [`http`] is the HTTP plumbing they share (server, errors, refusals, health, route
//! assembly). Data flow: a door → [`resolve`] (credential → targets and logins) →
//! [`terminate`] (per-engine session termination and verification) → [`audit`]
//! (hash-chained records). [`runner`] runs a plan through the last two, and [`context`]
//! holds what the server and the CLI share. [`run`] assembles the routes: each area exports
//! a `router()`, handed to [`http::app`]. [`telemetry`] holds every metric, recorded from
//! each layer and served at `GET /metrics` by [`http::exporter`]; [`collector`] sets the
//! gauges that take a query, on a tick. [`notify`] queues outbound notifications (Slack,
//! PagerDuty, signed webhooks) in a durable outbox and delivers them; [`watch`] raises the
//! ones no action raises (a target down, the audit chain broken).

pub mod action;
pub mod audit;
pub mod cli;
pub mod collector;
pub mod config;
pub mod console;
pub mod context;
pub mod fds;
pub mod http;
pub mod intake;
pub mod logging;
pub mod notify;
pub mod operator;
pub mod policy;
pub mod queue;
pub mod resolve;
pub mod runner;
pub mod select;
pub mod signing;
pub mod store;
pub mod sweep;
pub mod telemetry;
pub mod terminate;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::context::{Context, ContextError};
use crate::http::health::Health;
use crate::http::refusal::Refusals;
use crate::http::server::{self, Limits};
use crate::intake::{Intake, IntakeError};
use crate::operator::OperatorState;

/// How often remembered `webhook-id`s past their retention are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often login identities are learned again (mapped, protected, superusers, sever's own,
/// and those matching a sweep pattern); each sweep also learns right before it runs.
const LEARN_EVERY: Duration = Duration::from_secs(300);

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Start-up failed.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// The intake could not be set up.
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// Serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    /// The listeners' connection caps do not fit under the open-file limit.
    #[error(transparent)]
    Descriptors(#[from] fds::FdError),
    /// A configured address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}
/// The OpenAPI 3.1 document of every route sever serves (`GET /openapi.json`), from the
/// areas' routers, which register each route with its description.
pub fn openapi() -> utoipa::openapi::OpenApi {
    http::openapi::document([
        http::health::routes().into_openapi(),
        intake::routes().into_openapi(),
        operator::routes().into_openapi(),
        http::exporter::openapi(),
    ])
}

/// Installs the process-wide TLS crypto provider. Several crates pull in rustls with
/// different backends; without an explicit choice the first TLS connection panics.
pub fn install_crypto_provider() {
    // An Err only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a caller can swap out when embedding the server (tests use it to keep SNS traffic
/// off the internet).
pub struct RunOptions {
    /// Fetches SNS signing certificates and confirms subscriptions.
    pub sns_http: Arc<dyn intake::sns::SnsHttp>,
    /// A listener for the operator API alone, which the main listener then no longer serves.
    /// Without one, `server.operator_listen` is bound if configured.
    pub operator_listener: Option<TcpListener>,
    /// A listener for `GET /metrics` alone, without a token. Without one,
    /// `server.metrics_listen` is bound if configured; with neither, `/metrics` is on the
    /// operator listener, behind `metrics.tokens_sha256`.
    pub metrics_listener: Option<TcpListener>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            sns_http: Arc::new(intake::sns::HttpsClient::new()),
            operator_listener: None,
            metrics_listener: None,
        }
    }
}

/// Builds everything from `config`, works the queue and serves on `listener` until
/// `shutdown` completes; then stops accepting, finishes or hands back running work, and
/// returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run_with(config, listener, shutdown, RunOptions::default()).await
}

/// [`run`] with replaceable parts.
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: RunOptions,
) -> Result<(), ServeError> {
    install_crypto_provider();
    let has_operator_listener =
        options.operator_listener.is_some() || config.server.operator_listen.is_some();
    let caps = connection_caps(&config, has_operator_listener)?;
    let operator_listener =
        given_or_bound(options.operator_listener, config.server.operator_listen).await?;
    let metrics_listener =
        given_or_bound(options.metrics_listener, config.server.metrics_listen).await?;
    // Before anything records: the recorder is the process's, installed once.
    let metrics = http::exporter::install();
    let ctx = Arc::new(Context::build(config).await?);
    telemetry::initialize(
        ctx.targets.iter().map(|(target, _)| target.as_str()),
        &action::Origin::NAMES,
    );
    let tracker = TaskTracker::new();
    let refusals = Arc::new(Refusals::new(ctx.clone()));
    let intake = Intake::new(ctx.clone(), options.sns_http, refusals.clone()).await?;
    let operators = OperatorState::new(ctx.clone());
    let health = Health {
        ctx: ctx.clone(),
        vault: intake.vault.clone(),
        subscriber: intake.vault_status.clone(),
    };
    for warning in ctx.config.warnings() {
        tracing::warn!("{warning}");
    }
    // `check-config` refuses this; a running sever only skips such sessions as its own.
    if let Err(e) = ctx.config.check_own_logins() {
        tracing::warn!("{e}; its sessions are skipped as own_login");
    }
    let background = CancellationToken::new();
    // Stopped only after the queue worker has drained, so the final checkpoint covers the
    // records of the steps finished during shutdown.
    let last_checkpoint = CancellationToken::new();
    tracker.spawn(
        audit::checkpoint_writer(
            &ctx.config.audit,
            ctx.audit.clone(),
            ctx.checkpoint_file.clone(),
            ctx.audit_chain.clone(),
            last_checkpoint.clone(),
        )
        .map_err(ContextError::from)?,
    );
    let termination = &ctx.config.termination;
    // A step is bounded by the termination timeouts; allow that long to finish at shutdown.
    let drain = termination.timeout + termination.verify_timeout + Duration::from_secs(5);
    let worker = tokio::spawn(runner::run(ctx.clone(), background.clone(), drain));
    tokio::spawn(maintain(ctx.clone(), background.clone()));
    // Outside the queue's slots: a channel that is down holds no worker.
    tokio::spawn(ctx.notifier.clone().run(background.clone()));
    tokio::spawn(watch::run(ctx.clone(), background.clone()));
    // Between commits too, so a deleted store file shows in the log and `/readyz` at once.
    tokio::spawn(ctx.store.clone().watch_file(background.clone()));
    tokio::spawn(
        ctx.store
            .clone()
            .keep_warm(store::KEEP_WARM_EVERY, background.clone()),
    );
    intake::spawn_background(&intake, &background);
    // On the tracker, so shutdown waits for a sweep in progress to finish its records.
    tracker.spawn(sweep::run_sweeper(ctx.clone(), background.clone()));
    tracker.spawn(policy::run_policies(ctx.clone(), background.clone()));
    tokio::spawn(runner::schedule::run_announcer(
        ctx.clone(),
        background.clone(),
    ));
    tracker.spawn(refusals.clone().flush_periodically(background.clone()));
    let upkeep = metrics.clone();
    // Cancelled by the first scrape: the collector lists no target before anyone looks.
    let scraped = CancellationToken::new();
    tokio::spawn(collector::run(
        ctx.clone(),
        move || upkeep.run_upkeep(),
        scraped.clone(),
        background.clone(),
    ));
    let layers = http::Layers {
        request_timeout: ctx.config.server.request_timeout,
        max_body: ctx.config.server.max_body_bytes,
        // Kept past the routers, to write the last window's counted refusals at shutdown.
        refusals: refusals.clone(),
    };

    let addr = listener.local_addr()?;
    match &operator_listener {
        None => tracing::info!(%addr, "sever listening"),
        Some(operator) => {
            tracing::info!(intake = %addr, operator = %operator.local_addr()?, "sever listening");
        }
    }
    if let Some(scrape) = &metrics_listener {
        tracing::info!(metrics = %scrape.local_addr()?, "serving GET /metrics without a token");
    }
    // `/metrics` goes with the operator API unless it has a listener of its own.
    let own_metrics_listener = metrics_listener.is_some();
    let guarded_metrics = || {
        (!own_metrics_listener).then(|| {
            http::exporter::guarded_router(metrics.clone(), &ctx.config.metrics, scraped.clone())
        })
    };
    let limits = |max_connections| Limits {
        header_read_timeout: ctx.config.server.header_read_timeout,
        max_connections,
    };
    let stop = CancellationToken::new();
    let serving = async {
        match operator_listener {
            None => {
                let router = http::app(
                    [
                        http::health::router(health),
                        intake::router(intake),
                        crate::operator::router(operators),
                        http::openapi::router(&openapi()),
                        console::router(),
                    ]
                    .into_iter()
                    .chain(guarded_metrics()),
                    &layers,
                );
                server::serve(listener, router, limits(caps.intake), stop.clone()).await;
            }
            Some(operator) => {
                let intake = http::app(
                    [http::health::router(health.clone()), intake::router(intake)],
                    &layers,
                );
                let operators = http::app(
                    [
                        http::health::router(health),
                        crate::operator::router(operators),
                        http::openapi::router(&openapi()),
                        console::router(),
                    ]
                    .into_iter()
                    .chain(guarded_metrics()),
                    &layers,
                );
                // Always set: the caps were sized with this listener counted.
                let operator_cap = caps
                    .operator
                    .unwrap_or(fds::DEFAULT_OPERATOR_MAX_CONNECTIONS);
                tokio::join!(
                    server::serve(listener, intake, limits(caps.intake), stop.clone()),
                    server::serve(operator, operators, limits(operator_cap), stop.clone()),
                );
            }
        }
    };
    let scraping = async {
        if let Some(scrape) = metrics_listener {
            let open = http::exporter::open_router(metrics.clone(), scraped.clone());
            let router = http::app([open], &layers);
            let limits = limits(fds::METRICS_MAX_CONNECTIONS);
            server::serve(scrape, router, limits, stop.clone()).await;
        }
    };
    let stopping = async {
        shutdown.await;
        stop.cancel();
    };
    // All end together: serving drains its connections once `stop` is cancelled.
    tokio::join!(serving, scraping, stopping);

    // No new requests now; stop claiming work, finish or hand back what is running.
    background.cancel();
    if let Err(e) = worker.await {
        tracing::error!(error = %e, "the queue worker failed");
    }
    last_checkpoint.cancel();
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::error!(
            running = tracker.len(),
            "a sweep was still running at shutdown"
        );
    }
    // Nothing refuses requests any more: the last window's counts go on record.
    refusals.flush().await;
    tracing::info!("sever stopped");
    Ok(())
}

/// The listener a caller gave, else one bound to the configured address, else none.
async fn given_or_bound(
    given: Option<TcpListener>,
    configured: Option<std::net::SocketAddr>,
) -> Result<Option<TcpListener>, ServeError> {
    match (given, configured) {
        (Some(listener), _) => Ok(Some(listener)),
        (None, Some(addr)) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| ServeError::Bind { addr, source }),
        (None, None) => Ok(None),
    }
}

/// Raises the open-file limit and sizes each listener's connection cap to fit under it,
/// logging the choice; refuses configured caps that cannot fit.
fn connection_caps(config: &Config, operator_listener: bool) -> Result<fds::Caps, ServeError> {
    let limit = fds::raise_limit()?;
    let budget = config.fd_budget(limit);
    let caps = fds::size_caps(&config.server.connection_caps(), operator_listener, budget)?;
    tracing::info!(
        open_file_limit = limit,
        max_connections = caps.intake,
        operator_max_connections = caps.operator,
        reserved = limit.saturating_sub(budget.for_connections() as u64),
        "connection caps sized to the open-file limit"
    );
    let shrunk =
        |configured: Option<usize>, default, chosen| configured.is_none() && chosen < default;
    if shrunk(
        config.server.max_connections,
        fds::DEFAULT_MAX_CONNECTIONS,
        caps.intake,
    ) || caps.operator.is_some_and(|o| {
        shrunk(
            config.server.operator_max_connections,
            fds::DEFAULT_OPERATOR_MAX_CONNECTIONS,
            o,
        )
    }) {
        tracing::warn!(
            "the open-file limit is too low for the default connection caps, so they were \
             lowered to fit ({budget}); raise the hard limit (LimitNOFILE=) to serve more"
        );
    }
    Ok(caps)
}

/// Background upkeep: learn login identities, prune old `webhook-id`s and finished actions.
async fn maintain(ctx: Arc<Context>, stop: CancellationToken) {
    let mut learn = tokio::time::interval(LEARN_EVERY);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = learn.tick() => ctx.learn_logins().await,
            _ = prune.tick() => {
                let retention = chrono::Duration::from_std(ctx.config.webhooks.replay_retention)
                    .unwrap_or(chrono::Duration::MAX);
                let before = chrono::Utc::now() - retention;
                match ctx.store.prune_claims(before).await {
                    Ok(n) if n > 0 => tracing::debug!(pruned = n, "old webhook-ids dropped"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not prune webhook-ids"),
                }
                let keep = chrono::Duration::from_std(ctx.config.queue.keep_finished)
                    .unwrap_or(chrono::Duration::MAX);
                let remember = chrono::Duration::from_std(ctx.config.alertmanager.remember_for)
                    .unwrap_or(chrono::Duration::MAX);
                match ctx.store.prune_alerts(chrono::Utc::now() - remember).await {
                    Ok(n) if n > 0 => tracing::debug!(pruned = n, "old Alertmanager firings dropped"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not prune Alertmanager firings"),
                }
                match ctx.queue.prune_finished(chrono::Utc::now() - keep).await {
                    Ok(n) if n > 0 => tracing::debug!(pruned = n, "old finished actions dropped"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not prune finished actions"),
                }
            }
        }
    }
}
