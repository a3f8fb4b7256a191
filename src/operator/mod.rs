//! The operator door: authentication ([`auth`]: tokens and their hashes), revocations,
//! sessions and actions. Each operation is a plain function over what it needs, called by
//! the HTTP handlers here and by the command line (`cli`), which runs the steps in-process
//! and needs no server.
//!
//! May call: `http` (errors, replies, the actor), `runner`, `context`, `resolve`,
//! `queue`, `terminate`, `audit`, `config`. Not `intake` or `cli`.

pub mod actions;
pub mod auth;
pub mod drains;
pub mod locks;
pub mod policies;
pub mod revocations;
pub mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{delete, get, post};

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
}

impl OperatorState {
    /// The operators configured in `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            operators: Arc::new(Operators::new(&ctx.config.operators)),
            max_body: ctx.config.server.max_body_bytes,
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
    Router::new()
        .route("/v1/revocations", post(revocations::post_revocation))
        .route("/v1/sessions", get(sessions::get_sessions))
        .route("/v1/actions", get(actions::list_actions))
        .route("/v1/actions/{id}", get(actions::get_action))
        .route("/v1/actions/{id}/cancel", post(actions::cancel_action))
        .route("/v1/locks", post(locks::post_lock).get(locks::get_locks))
        .route("/v1/locks/{id}", delete(locks::delete_lock))
        .route(
            "/v1/drains",
            post(drains::post_drain).get(drains::get_drains),
        )
        .route("/v1/drains/{id}", delete(drains::delete_drain))
        .route("/v1/policies", get(policies::get_policies))
        .route("/v1/policies/{name}/run", post(policies::run_policy))
        .route("/v1/policies/{name}/resume", post(policies::resume_policy))
        .with_state(state)
}
