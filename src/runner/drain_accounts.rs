//! A drain on MySQL/MariaDB, which has no per-database gate (`lock_accounts`): the accounts
//! whose sessions use the database are locked instead, each as a login lock under the
//! drain's id (so they show in `GET /v1/locks`), then the database's sessions end. The
//! price, said in the report: a locked account loses every database on the server, and an
//! account not connected now is not covered.
//!
//! The drain is recorded first, with a marker for a gate, so a crash leaves a drain whose
//! re-open still ends the locks taken. A drain that cannot lock every account ends its locks
//! and itself as failed, rather than staying half in force.

use std::collections::BTreeSet;

use chrono::Utc;
use uuid::Uuid;

use super::drains::{DrainStep, end_sessions};
use super::locks::{LoginLock, close_gate, locked_note, unlock};
use crate::context::Context;
use crate::select::{Decision, Selector};
use crate::store::{NewDrain, StoreError};
use crate::terminate::drain::DatabaseGate;
use crate::terminate::{Engine, EngineError, TerminateOutcome};

fn store_error(e: StoreError) -> EngineError {
    EngineError::Query(format!("state store: {e}"))
}

/// The gate kept for a drain that locks accounts: there is no database gate to restore.
pub(super) fn accounts_marker() -> DatabaseGate {
    DatabaseGate {
        setting: "none: accounts locked (lock_accounts)".into(),
    }
}

/// Drains the step's database by locking the accounts using it, then ending its sessions.
pub(super) async fn drain(
    ctx: &Context,
    engine: &dyn Engine,
    step: DrainStep<'_>,
) -> Result<TerminateOutcome, EngineError> {
    let drain_id = step.plan.action_id.to_string();
    let marker = serde_json::to_string(&accounts_marker()).unwrap_or_default();
    let record = NewDrain {
        drain_id: &drain_id,
        target: step.target,
        database: step.database,
        until: step.until,
        reason: step.plan.reason.as_deref().unwrap_or_default(),
        actor: step.actor,
        gate_before: &marker,
    };
    ctx.store
        .begin_drain(&record, Utc::now())
        .await
        .map_err(store_error)?;
    let selector = Selector {
        databases: vec![step.database.to_owned()],
        ..step.spare.clone()
    };
    let mut outcome = TerminateOutcome::default();
    if let Err(e) = lock_accounts(ctx, engine, &step, &selector, &mut outcome).await {
        // Half a drain is not left in force: the accounts locked so far are restored and
        // the drain ends as failed. Should that fail too, the drain stays active and its
        // scheduled re-open (which never gives up) ends the locks.
        let drain_id = step.plan.action_id;
        let _ = super::drains::undrain(ctx, engine, drain_id, step.target, step.database, "failed")
            .await;
        return Err(e);
    }
    outcome.absorb(end_sessions(ctx, engine, &step, &selector).await?);
    Ok(outcome)
}

/// Locks each distinct account with a session the drain selects (not sever's own, not an
/// administrator's, not a protected login's), noting each and the price.
async fn lock_accounts(
    ctx: &Context,
    engine: &dyn Engine,
    step: &DrainStep<'_>,
    selector: &Selector,
    outcome: &mut TerminateOutcome,
) -> Result<(), EngineError> {
    let accounts: BTreeSet<String> = engine
        .list(selector, false)
        .await?
        .into_iter()
        .filter(|l| l.decision == Decision::Selected && l.guard.is_none())
        .filter_map(|l| l.session.login)
        .filter(|login| !step.protected.contains(login))
        .collect();
    let drain_id = step.plan.action_id.to_string();
    let reason = format!("drain {drain_id} of database {}", step.database);
    for login in &accounts {
        let lock = LoginLock {
            lock_id: &drain_id,
            target: step.target,
            login,
            until: step.until,
            reason: &reason,
            actor: step.actor,
        };
        let found = close_gate(ctx, engine, &lock).await?;
        outcome
            .notes
            .push(locked_note(login, found.as_ref(), step.until));
    }
    outcome.notes.push(match accounts.is_empty() {
        true => format!(
            "no account had a session in {:?}: nothing was locked",
            step.database
        ),
        false => format!(
            "locked account(s) {}: each locked account loses every database on the server, \
             not just {}; accounts not connected now are not covered",
            accounts
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            step.database
        ),
    });
    Ok(())
}

/// Ends every lock drain `drain_id` took on `target` (restoring each account once no other
/// lock on it is in force); nothing when it took none.
pub(super) async fn unlock_accounts(
    ctx: &Context,
    engine: &dyn Engine,
    drain_id: Uuid,
    target: &str,
    ended_by: &str,
) -> Result<TerminateOutcome, EngineError> {
    let mut outcome = TerminateOutcome::default();
    let locks = ctx
        .store
        .locks(Some(&drain_id.to_string()))
        .await
        .map_err(store_error)?;
    // Ended ones too: a retried re-open finds them ended with their gate still to restore.
    for lock in locks.iter().filter(|l| l.target == target) {
        outcome.absorb(unlock(ctx, engine, drain_id, target, &lock.login, ended_by).await?);
    }
    Ok(outcome)
}
