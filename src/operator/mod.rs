//! The operator door: authentication ([`auth`]: tokens and their hashes), revocations,
//! sessions, actions and the audit trail. Each operation is a plain function over what it
//! needs, called by the HTTP handlers here and by the command line (`cli`), which runs the
//! steps in-process and needs no server.
//!
//! May call: `http` (errors, replies, the actor), `runner`, `context`, `resolve`,
//! `queue`, `collector` (target probes), `terminate`, `audit`, `config`. Not `intake` or
//! `cli`.

pub mod actions;
pub mod audit;
pub mod auth;
pub mod drains;
pub mod locks;
pub mod policies;
pub mod revocations;
pub mod sessions;
pub mod targets;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use self::auth::{Operator, Operators, bearer_token, new_token, token_hash};
use crate::context::Context;

/// What the operator API's handlers share.
#[derive(Clone)]
pub struct OperatorState {
    /// Store, audit trail, queue, targets and config.
    pub ctx: Arc<Context>,
    /// The configured operators, for the [`Operator`] extractor.
    pub operators: Arc<Operators>,
    /// `server.max_body_bytes`.
    pub max_body: usize,
    /// The audit verification this replica runs, if any.
    pub verifications: Arc<audit::verifications::Verifications>,
}

impl OperatorState {
    /// The operators configured in `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            operators: Arc::new(Operators::new(&ctx.config.operators)),
            max_body: ctx.config.server.max_body_bytes,
            verifications: Arc::default(),
            ctx,
        }
    }
}

impl FromRef<OperatorState> for Arc<Operators> {
    fn from_ref(state: &OperatorState) -> Self {
        state.operators.clone()
    }
}

impl FromRef<OperatorState> for Arc<Context> {
    fn from_ref(state: &OperatorState) -> Self {
        state.ctx.clone()
    }
}

/// Operator-authenticated routes (revocations, sessions, actions): the routes that are kept
/// off the intake listener when the two are split.
pub fn router(state: OperatorState) -> Router {
    routes().split_for_parts().0.with_state(state)
}

/// The operator routes, each registered with its OpenAPI description.
pub fn routes() -> OpenApiRouter<OperatorState> {
    OpenApiRouter::new()
        .routes(routes!(revocations::post_revocation))
        .routes(routes!(sessions::get_sessions))
        .routes(routes!(targets::get_targets))
        .routes(routes!(actions::list_actions))
        .routes(routes!(actions::get_action))
        .routes(routes!(actions::cancel_action))
        .routes(routes!(locks::post_lock, locks::get_locks))
        .routes(routes!(locks::delete_lock))
        .routes(routes!(drains::post_drain, drains::get_drains))
        .routes(routes!(drains::delete_drain))
        .routes(routes!(policies::get_policies))
        .routes(routes!(policies::run_policy))
        .routes(routes!(policies::resume_policy))
        .routes(routes!(audit::list_records))
        .routes(routes!(audit::export_records))
        .routes(routes!(
            audit::verifications::post_verification,
            audit::verifications::list_verifications
        ))
        .routes(routes!(audit::verifications::get_verification))
}
