//! Event sources: the doors through which rotation systems report a changed credential —
//! signed webhooks ([`events`]), AWS ([`aws`]: the Lambda hook, EventBridge, SNS), Vault
//! ([`vault`]: forwarded events, the subscriber, the watcher). Each authenticates its
//! sender, reads the event, resolves it to a plan and hands it to [`accept()`], which is
//! free of HTTP. [`router`] gives the HTTP routes; refusals are recorded by `http`'s
//! middleware from the errors the handlers return.
//!
//! May call: `http` (errors, replies, refusal records), `runner`, `context`,
//! `resolve`, `queue`, `audit`, `store`, `config`. Not `operator` or `cli`.

mod accept;
mod alertmanager;
mod aws;
mod eventbridge;
mod events;
pub mod fuzz;
pub mod sns;
pub mod vault;
pub mod webhook;

pub use self::accept::{Accepted, Arrival, Claim, accept, note};

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::sns::{SnsHttp, SnsVerifier};
use self::webhook::{SecretError, Verifier};
use crate::audit::Kind;
use crate::config::ConfigError;
use crate::context::Context;
use crate::http::error::ApiError;
use crate::http::health::Status;
use crate::http::keys::HashedKeys;
use crate::http::refusal::Refusals;
use crate::http::reply::{finished, running, status_response};
use crate::http::{Actor, RequestMeta};
use crate::resolve::aws::{SecretsManager, mapped_secrets};
use crate::resolve::vault::Vault;
use secrecy::ExposeSecret;

/// The AWS intake's authentication and lookups.
struct AwsIntake {
    /// Present when a credential is an AWS secret.
    secrets_manager: Option<SecretsManager>,
    /// SHA-256 of each accepted EventBridge API key.
    api_keys: HashedKeys<()>,
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
                Ok(((), HashedKeys::<()>::hash(key.expose_secret().as_bytes())))
            })
            .collect::<Result<_, ConfigError>>()?;
        let api_keys = HashedKeys::new(api_keys);
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

/// What the intake's handlers and background sources share.
#[derive(Clone)]
pub struct Intake {
    /// Store, audit trail, queue, targets and config.
    pub ctx: Arc<Context>,
    verifier: Arc<Verifier>,
    aws: Arc<AwsIntake>,
    /// The Vault client, when Vault is configured.
    pub vault: Option<Arc<Vault>>,
    /// The Vault event subscriber's streams, for `/readyz`.
    pub vault_status: Arc<Status>,
    /// Where refusals outside HTTP requests (subscriber, watcher) are recorded.
    refusals: Arc<Refusals>,
    max_body: usize,
    /// Alertmanager's bearer tokens, by hash.
    alertmanager_keys: Arc<crate::http::keys::HashedKeys<()>>,
}

impl Intake {
    /// Loads the signing secrets and API keys and connects to Vault if configured; SNS
    /// certificates and confirmations go through `sns_http`.
    pub async fn new(
        ctx: Arc<Context>,
        sns_http: Arc<dyn SnsHttp>,
        refusals: Arc<Refusals>,
    ) -> Result<Self, IntakeError> {
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
            refusals,
            max_body: config.server.max_body_bytes,
            alertmanager_keys: Arc::new(alertmanager::keys(&config.alertmanager.tokens_sha256)),
            ctx,
        })
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
            Accepted::Scheduled(action_id, schedule) => {
                Ok(crate::http::reply::scheduled(action_id, &schedule))
            }
            Accepted::Started(action_id) if !wait => Ok(running(action_id, "accepted")),
            Accepted::Started(action_id) => finished(&self.ctx, action_id).await,
        }
    }

    /// Records why an event that did not come as an HTTP request (from the Vault subscriber
    /// or watcher, `meta` saying which) was refused, as the refusal middleware does for
    /// requests; errors that refuse nothing (sever's own unavailability) are only counted.
    pub async fn refused(&self, meta: &RequestMeta, actor: &Actor, error: &ApiError) {
        if error.is_refusal() {
            self.refusals.record(meta, actor, &error.refusal()).await;
        } else if let Some(source) = actor.event_source() {
            crate::telemetry::event_received(source, "failed");
        }
    }

    /// Audits an event that needs nothing done and answers `200` with `status` and `reason`.
    async fn acknowledge(
        &self,
        actor: &Actor,
        kind: Kind,
        status: &str,
        reason: String,
        detail: serde_json::Value,
    ) -> Result<Response, ApiError> {
        note(&self.ctx, actor, kind, &reason, detail).await?;
        Ok(status_response(status, &reason))
    }
}

/// Starts the Vault token keeper, event subscriber and static-role watcher, as configured;
/// they end when `stop` is cancelled.
pub fn spawn_background(intake: &Intake, stop: &CancellationToken) {
    if let Some(client) = &intake.vault {
        tokio::spawn(client.clone().keep_token_alive(stop.clone()));
    }
    if let Some(config) = &intake.ctx.config.vault {
        if config.subscriber.enabled {
            tokio::spawn(vault::subscriber::run(intake.clone(), stop.clone()));
        }
        // The watcher's first pass, at once, checks the configured roles and mounts exist.
        match &config.watcher {
            Some(watcher) => {
                tokio::spawn(vault::watcher::run(
                    intake.clone(),
                    watcher.interval,
                    stop.clone(),
                ));
            }
            None => {
                tokio::spawn(vault::watcher::verify_at_start(
                    intake.clone(),
                    stop.clone(),
                ));
            }
        }
    }
}

/// Signed events from rotation systems: the routes that face senders.
pub fn router(intake: Intake) -> Router {
    routes().split_for_parts().0.with_state(intake)
}

/// The intake routes, each registered with its OpenAPI description.
pub fn routes() -> OpenApiRouter<Intake> {
    OpenApiRouter::new()
        .routes(routes!(events::post_event))
        .routes(routes!(aws::post_aws_event))
        .routes(routes!(vault::post_vault_event))
        .routes(routes!(alertmanager::post_alertmanager))
}
