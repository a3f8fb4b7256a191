//! `POST /v1/locks`, `GET /v1/locks`, `DELETE /v1/locks/{id}` and `sever lock` / `unlock` /
//! `locks`: keep a login out for a bounded time, then let it back in as it was.
//!
//! A lock is two actions: its expiry, stored first and scheduled for `until` (its steps
//! never give up), then the lock itself. Stored in that order, a crash between the two
//! leaves an expiry with nothing to end, never a lock with no expiry.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::{Extension, Json};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::OperatorState;
use super::auth::Operator;
use crate::action::Step;
use crate::context::Context;
use crate::http::error::{ApiError, parse_json};
use crate::http::reply::finished;
use crate::http::{self, Actor};
use crate::queue::{Submission, Submitted};
use crate::resolve::locks::{LockRequest, lock, unlock_plan};
use crate::store::LockRow;

/// One lock on one target, as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LockView {
    /// The lock's id (also its action's).
    pub lock_id: String,
    /// Target id.
    pub target: String,
    /// The login kept out.
    pub login: String,
    /// When it began.
    pub since: String,
    /// When it ends by itself (`null`: permanent, until lifted).
    pub until: Option<String>,
    /// Why.
    pub reason: String,
    /// Who took it.
    pub actor: String,
    /// `active` or `ended`.
    pub state: String,
    /// When it ended.
    pub ended_at: Option<String>,
    /// What ended it: `expiry`, or the operator who lifted it.
    pub ended_by: Option<String>,
}

impl From<LockRow> for LockView {
    fn from(r: LockRow) -> Self {
        let (ended_at, ended_by) = r.ended.unzip();
        Self {
            lock_id: r.lock_id,
            target: r.target,
            login: r.login,
            since: r.since,
            until: r.until,
            reason: r.reason,
            actor: r.actor,
            state: r.state,
            ended_at,
            ended_by,
        }
    }
}

/// Takes a lock: stores its expiry, then the lock, and answers with the lock's report.
#[utoipa::path(post,
    path = "/v1/locks",
    tag = "operator",
    security(("operator_token" = [])),
    request_body = LockRequest,
    responses(
        (status = 200, description = "Finished: the lock's report.", body = crate::action::ActionReport),
        (status = 202, description = "Stored, not finished (or scheduled): where to follow it.", body = crate::http::openapi::AcceptedBody),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
        (status = 400, description = "`malformed_json` or `unreadable_body`.", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn post_lock(
    State(state): State<OperatorState>,
    operator: Operator,
    body: Result<Bytes, BytesRejection>,
) -> (Extension<Actor>, Result<Response, ApiError>) {
    let actor = operator.actor();
    let answer = async {
        let body = http::body(body, state.max_body)?;
        let request: LockRequest = parse_json(&body)?;
        let lock_id = take(&state.ctx, &request, &actor.to_string()).await?;
        tracing::info!(lock_id = %lock_id, operator = %operator.name, login = %request.login,
            "login lock requested");
        crate::http::reply::answered(&state.ctx, lock_id).await
    };
    let answer = answer.await;
    (Extension(actor), answer)
}

/// Plans and stores a lock and its expiry; the lock's id.
pub async fn take(ctx: &Context, request: &LockRequest, actor: &str) -> Result<Uuid, ApiError> {
    let plans = lock(&ctx.config, request, Utc::now())?;
    let targets: Vec<String> = plans.lock.steps.iter().map(|s| s.target.clone()).collect();
    check_grants(ctx, &targets).await?;
    if let Some((expiry, due)) = plans.expiry {
        let mut submission = Submission::new(expiry, actor.to_owned());
        submission.due = Some(due);
        submission.never_give_up = true;
        store(ctx, submission).await?;
    }
    store(ctx, Submission::new(plans.lock, actor.to_owned())).await
}

/// Refuses (`422`) a lock or drain on a target whose lock login lacks the grant it needs,
/// naming the grant, before anything is stored. A target that cannot be asked now is let
/// through: the step will say what is wrong, and retry while it is unreachable.
pub async fn check_grants(ctx: &Context, targets: &[String]) -> Result<(), ApiError> {
    for target in targets {
        let Some(engine) = ctx.targets.get(target) else {
            continue;
        };
        let asked =
            tokio::time::timeout(ctx.config.termination.timeout, engine.missing_lock_grant());
        if let Ok(Ok(Some(grant))) = asked.await {
            return Err(ApiError::Invalid(format!(
                "target {target:?}: the lock login lacks {grant}, which locks need"
            )));
        }
    }
    Ok(())
}

async fn store(ctx: &Context, submission: Submission) -> Result<Uuid, ApiError> {
    match crate::runner::schedule::submit(ctx, submission).await {
        Ok(Submitted::Accepted(id)) => Ok(id),
        Ok(Submitted::Duplicate { action_id, .. }) => Err(ApiError::Unavailable(format!(
            "unexpected duplicate of action {action_id}"
        ))),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

/// `GET /v1/locks?all=true`: the active locks (with `all`, ended ones too).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Also list ended locks.
    #[serde(default)]
    pub all: bool,
}

/// Lists locks, active first.
#[utoipa::path(get,
    path = "/v1/locks",
    tag = "operator",
    security(("operator_token" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "The locks, active first.", body = Vec<LockView>),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn get_locks(
    State(state): State<OperatorState>,
    operator: Operator,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> (Extension<Actor>, Result<Json<Vec<LockView>>, ApiError>) {
    let answer = async {
        let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
        list(&state.ctx, None, q.all).await.map(Json)
    };
    let answer = answer.await;
    (Extension(operator.actor()), answer)
}

/// The locks (of one id, if given), active ones only unless `all`.
pub async fn list(
    ctx: &Context,
    lock_id: Option<&str>,
    all: bool,
) -> Result<Vec<LockView>, ApiError> {
    let rows = ctx
        .store
        .locks_where(lock_id, !all)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(rows.into_iter().map(LockView::from).collect())
}

/// `DELETE /v1/locks/{id}?reason=…`: why it is lifted early.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LiftQuery {
    /// Why; required, recorded in the audit trail.
    pub reason: String,
}

/// Lifts a lock before its expiry; answers with the report of its end.
#[utoipa::path(delete,
    path = "/v1/locks/{id}",
    tag = "operator",
    security(("operator_token" = [])),
    params(("id" = Uuid, Path, description = "The lock."), LiftQuery),
    responses(
        (status = 200, description = "Lifted: the report of its end.", body = crate::action::ActionReport),
        (status = 202, description = "Stored, not finished (or scheduled): where to follow it.", body = crate::http::openapi::AcceptedBody),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request` and the other refusals of what the request names.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`unknown_lock`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn delete_lock(
    State(state): State<OperatorState>,
    operator: Operator,
    id: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<LiftQuery>, axum::extract::rejection::QueryRejection>,
) -> (Extension<Actor>, Result<Response, ApiError>) {
    let actor = operator.actor();
    let answer = async {
        let Path(id) = id.map_err(|e| ApiError::Invalid(e.body_text()))?;
        let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
        let action = lift(&state.ctx, id, &q.reason, &actor.to_string()).await?;
        finished(&state.ctx, action).await
    };
    let answer = answer.await;
    (Extension(actor), answer)
}

/// The credential whose rotation `plan` is, when its config asks that rotation to lift
/// locks (`lift_locks`); `None` for anything else, a `revoked` event included.
pub fn lifting_credential<'a>(
    config: &crate::config::Config,
    plan: &'a crate::action::Plan,
) -> Option<&'a str> {
    use crate::action::{EventKind, Origin};
    let credential = match &plan.origin {
        Origin::Event {
            credential,
            kind: EventKind::Rotated,
            ..
        }
        | Origin::Aws { credential, .. } => credential,
        Origin::Vault {
            credential: Some(credential),
            ..
        } => credential,
        _ => return None,
    };
    config
        .credentials
        .get(credential)
        .is_some_and(|c| c.lift_locks)
        .then_some(credential.as_str())
}

/// Lifts the active locks on the logins a rotation of `credential` reaches, that began before
/// the rotation's cutoff (`plan`'s scope), when the credential's config asks for it
/// (`lift_locks`). A lock that began after the rotation is kept: the rotation cannot have
/// been the answer to it. A `revoked` event never lifts anything. Returns the actions
/// stored.
pub async fn lift_for_rotation(ctx: &Context, plan: &crate::action::Plan) -> Vec<Uuid> {
    let Some(credential) = lifting_credential(&ctx.config, plan) else {
        return Vec::new();
    };
    let cutoff = match plan.scope {
        Some(crate::terminate::Scope::Before(at)) => at,
        _ => Utc::now(),
    };
    let active = match list(ctx, None, false).await {
        Ok(active) => active,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the locks a rotation may lift");
            return Vec::new();
        }
    };
    let mut lifted = Vec::new();
    for lock in active {
        let reached = plan
            .steps
            .iter()
            .any(|s| s.target == lock.target && s.logins.contains(&lock.login));
        let before_cutoff =
            chrono::DateTime::parse_from_rfc3339(&lock.since).is_ok_and(|since| since < cutoff);
        if !reached || !before_cutoff {
            continue;
        }
        let Ok(lock_id) = lock.lock_id.parse::<Uuid>() else {
            continue;
        };
        let step = Step {
            protected: ctx.config.protected_on(&lock.target),
            logins: vec![lock.login.clone()],
            target: lock.target.clone(),
        };
        let by = format!("rotation of credential {credential}");
        let plan = unlock_plan(lock_id, &lock.login, vec![step], &by, &by);
        let mut submission = Submission::new(plan, by.clone());
        submission.never_give_up = true;
        match store(ctx, submission).await {
            Ok(id) => lifted.push(id),
            Err(e) => tracing::warn!(error = %e, lock_id = %lock.lock_id,
                "could not store the lifting of a lock by a rotation"),
        }
    }
    lifted
}

/// Stores the end of lock `id` on every target where it is active; the action's id.
pub async fn lift(ctx: &Context, id: Uuid, reason: &str, actor: &str) -> Result<Uuid, ApiError> {
    if reason.trim().is_empty() {
        return Err(ApiError::Invalid("reason is required".into()));
    }
    let active = list(ctx, Some(&id.to_string()), false).await?;
    let Some(first) = active.first() else {
        return Err(ApiError::UnknownLock(id.to_string()));
    };
    let login = first.login.clone();
    if active.iter().any(|l| l.login != login) {
        // A drain on MySQL/MariaDB locks every account using the database under its id.
        return Err(ApiError::Invalid(format!(
            "lock {id} covers several accounts (it is a drain's): lift it with \
             DELETE /v1/drains/{id}"
        )));
    }
    let targets: BTreeSet<String> = active.iter().map(|l| l.target.clone()).collect();
    let steps = targets
        .into_iter()
        .map(|target| Step {
            protected: ctx.config.protected_on(&target),
            logins: vec![login.clone()],
            target,
        })
        .collect();
    let plan = unlock_plan(id, &login, steps, actor, reason);
    let mut submission = Submission::new(plan, actor.to_owned());
    submission.never_give_up = true;
    store(ctx, submission).await
}
