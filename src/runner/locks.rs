//! The steps of a login lock and of its end, on one target.
//!
//! Taking a lock reads the login's gate, records the lock with that gate (kept only if no
//! earlier lock on the login is in force, so the first lock's view is what gets restored),
//! then closes the gate and, if asked, ends the login's sessions. Recording before closing
//! means a crash in between leaves a lock whose expiry still restores the gate. Ending a
//! lock marks it ended and, when it was the login's last, restores the kept gate, unless
//! someone else changed it meanwhile, which is reported and left alone.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::action::Plan;
use crate::context::Context;
use crate::store::{Ended, NewLock, StoreError};
use crate::terminate::lockout::{LoginGate, Restored};
use crate::terminate::{Engine, EngineError, Journal, Scope, TerminateOutcome, TerminateRequest};

fn store_error(e: StoreError) -> EngineError {
    EngineError::Query(format!("state store: {e}"))
}

fn gate_text(gate: &LoginGate) -> String {
    serde_json::to_string(gate).unwrap_or_default()
}

/// What a lock step needs besides its target's engine.
pub(super) struct LockStep<'a> {
    pub plan: &'a Plan,
    pub actor: &'a str,
    pub target: &'a str,
    pub login: &'a str,
    pub until: Option<DateTime<Utc>>,
    pub terminate: bool,
    pub protected: &'a BTreeSet<String>,
    pub journal: Option<Arc<dyn Journal>>,
}

/// One login's lock on one target, as it is recorded: by a lock step, or by a drain with
/// `lock_accounts` (one per account, all under the drain's id).
pub(super) struct LoginLock<'a> {
    pub lock_id: &'a str,
    pub target: &'a str,
    pub login: &'a str,
    pub until: Option<DateTime<Utc>>,
    pub reason: &'a str,
    pub actor: &'a str,
}

/// Reads `lock.login`'s gate, records the lock with it, then closes the gate. Recording first
/// means a crash in between leaves a lock whose end still restores the gate; a close that
/// fails ends the lock as failed, so it is not left in force. The gate as it was; `None`
/// when the login was dropped meanwhile.
pub(super) async fn close_gate(
    ctx: &Context,
    engine: &dyn Engine,
    lock: &LoginLock<'_>,
) -> Result<Option<LoginGate>, EngineError> {
    let before = engine.login_gate(lock.login).await?.ok_or_else(|| {
        EngineError::Rejected(format!(
            "login {:?} does not exist on this target",
            lock.login
        ))
    })?;
    let record = NewLock {
        lock_id: lock.lock_id,
        target: lock.target,
        login: lock.login,
        until: lock.until,
        reason: lock.reason,
        actor: lock.actor,
        gate_before: &gate_text(&before),
    };
    ctx.store
        .begin_lock(&record, Utc::now())
        .await
        .map_err(store_error)?;
    match engine.close_login(lock.login).await {
        Ok(found) => Ok(found),
        Err(e) => {
            // Nothing was closed: the lock must not stay on record as in force, nor its
            // kept gate be "restored" later as if someone else had changed it.
            let ended = ctx
                .store
                .end_lock(lock.lock_id, lock.target, lock.login, "failed", Utc::now())
                .await
                .map_err(store_error)?;
            if let Ended::Restore(_) = ended {
                ctx.store
                    .forget_gate(lock.target, lock.login)
                    .await
                    .map_err(store_error)?;
            }
            Err(e)
        }
    }
}

/// What closing `login`'s gate came to, for the report.
pub(super) fn locked_note(
    login: &str,
    found: Option<&LoginGate>,
    until: Option<DateTime<Utc>>,
) -> String {
    match found {
        // Dropped between the read and the change: there is nothing to keep out.
        None => format!("login {login:?} was dropped while it was being locked"),
        Some(gate) => format!(
            "locked {login:?}: gate before {}, now {}; {}",
            gate_text(gate),
            gate_text(&gate.closed()),
            match until {
                Some(until) => format!("until {}", until.to_rfc3339()),
                None => "until lifted (permanent)".to_owned(),
            }
        ),
    }
}

/// Locks `login` on the step's target; with `terminate`, then ends its sessions.
pub(super) async fn lock(
    ctx: &Context,
    engine: &dyn Engine,
    step: LockStep<'_>,
) -> Result<TerminateOutcome, EngineError> {
    let lock_id = step.plan.action_id.to_string();
    let lock = LoginLock {
        lock_id: &lock_id,
        target: step.target,
        login: step.login,
        until: step.until,
        reason: step.plan.reason.as_deref().unwrap_or_default(),
        actor: step.actor,
    };
    let found = close_gate(ctx, engine, &lock).await?;
    let mut outcome = TerminateOutcome::default();
    outcome
        .notes
        .push(locked_note(step.login, found.as_ref(), step.until));
    if step.terminate && found.is_some() {
        let request = TerminateRequest {
            logins: vec![step.login.to_owned()],
            scope: Scope::All,
            protected: step.protected.clone(),
            dry_run: false,
            verify_timeout: ctx.config.termination.verify_timeout,
            refine_cutoff: false,
            journal: step.journal,
            roles: None,
        };
        outcome.absorb(engine.terminate(&request).await?);
    }
    Ok(outcome)
}

/// Ends lock `lock_id` on `target` and, if it was the login's last, restores the gate.
pub(super) async fn unlock(
    ctx: &Context,
    engine: &dyn Engine,
    lock_id: Uuid,
    target: &str,
    login: &str,
    ended_by: &str,
) -> Result<TerminateOutcome, EngineError> {
    let mut outcome = TerminateOutcome::default();
    let ended = ctx
        .store
        .end_lock(&lock_id.to_string(), target, login, ended_by, Utc::now())
        .await
        .map_err(store_error)?;
    let note = match ended {
        Ended::StillLocked(n) => {
            format!("{login:?} stays locked: {n} other lock(s) on it are still in force")
        }
        Ended::Nothing => format!("nothing to restore for {login:?}"),
        Ended::Restore(kept) => {
            let before: LoginGate = serde_json::from_str(&kept)
                .map_err(|e| EngineError::Config(format!("the kept gate is unreadable: {e}")))?;
            let note = match engine.restore_login(login, &before).await? {
                Restored::Restored => format!("restored {login:?} to {}", gate_text(&before)),
                Restored::Gone => format!("{login:?} is gone: nothing to restore"),
                Restored::Changed { now } => format!(
                    "{login:?} was changed by someone else while locked (now {}); left as \
                     found, not restored to {}",
                    gate_text(&now),
                    gate_text(&before)
                ),
            };
            ctx.store
                .forget_gate(target, login)
                .await
                .map_err(store_error)?;
            note
        }
    };
    outcome.notes.push(note);
    Ok(outcome)
}
