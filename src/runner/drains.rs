//! The steps of a database drain and of its end, on one target.
//!
//! Draining reads the database's gate, records the drain with it (kept only if no earlier
//! drain of the database is in force, so the first drain's view is what gets restored),
//! closes the gate, then ends the database's sessions but the spared ones, in the plan's
//! mode. Recording before closing means a crash in between leaves a drain whose re-open
//! still restores the gate. Where closing itself ends sessions (SQL Server's `ROLLBACK
//! IMMEDIATE`), they are listed and journaled first, so each is audited. Ending a drain
//! marks it ended and, when it was the database's last, restores the kept gate, unless
//! someone else changed it meanwhile, which is reported and left alone. MySQL/MariaDB has
//! no database gate: there a drain locks accounts instead (`drain_accounts`).

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::action::Plan;
use crate::context::Context;
use crate::select::{Decision, Selector};
use crate::store::{Drained, NewDrain, StoreError};
use crate::terminate::drain::{DatabaseGate, Reopened};
use crate::terminate::selected::{SelectRequest, end_selected};
use crate::terminate::{
    Engine, EngineError, Journal, Session, SkipReason, TerminateOutcome, record_intent,
    same_session,
};

fn store_error(e: StoreError) -> EngineError {
    EngineError::Query(format!("state store: {e}"))
}

fn gate_text(gate: &DatabaseGate) -> String {
    serde_json::to_string(gate).unwrap_or_default()
}

/// What a drain step needs besides its target's engine.
pub(super) struct DrainStep<'a> {
    pub plan: &'a Plan,
    pub actor: &'a str,
    pub target: &'a str,
    pub database: &'a str,
    pub until: Option<DateTime<Utc>>,
    pub spare: &'a Selector,
    /// No per-database gate (MySQL/MariaDB): lock the accounts using the database instead.
    pub lock_accounts: bool,
    pub protected: &'a BTreeSet<String>,
    pub journal: Option<Arc<dyn Journal>>,
}

/// Drains `database` on the step's target: closes its gate, then ends its sessions.
pub(super) async fn drain(
    ctx: &Context,
    engine: &dyn Engine,
    step: DrainStep<'_>,
) -> Result<TerminateOutcome, EngineError> {
    if step.lock_accounts {
        return super::drain_accounts::drain(ctx, engine, step).await;
    }
    let before = engine.database_gate(step.database).await?.ok_or_else(|| {
        EngineError::Rejected(format!(
            "database {:?} does not exist on this target",
            step.database
        ))
    })?;
    let drain_id = step.plan.action_id.to_string();
    let record = NewDrain {
        drain_id: &drain_id,
        target: step.target,
        database: step.database,
        until: step.until,
        reason: step.plan.reason.as_deref().unwrap_or_default(),
        actor: step.actor,
        gate_before: &gate_text(&before),
    };
    ctx.store
        .begin_drain(&record, Utc::now())
        .await
        .map_err(store_error)?;
    let selector = Selector {
        databases: vec![step.database.to_owned()],
        ..step.spare.clone()
    };
    let closed = close(engine, &step, &selector).await;
    let (ended_by_gate, found) = match closed {
        Ok(closed) => closed,
        Err(e) => {
            // Nothing was closed: the drain must not stay on record as in force, nor its
            // kept gate be "restored" later as if someone else had changed it.
            let ended = ctx
                .store
                .end_drain(&drain_id, step.target, "failed", Utc::now())
                .await
                .map_err(store_error)?;
            if let Drained::Restore(_) = ended {
                ctx.store
                    .forget_database_gate(step.target, step.database)
                    .await
                    .map_err(store_error)?;
            }
            return Err(e);
        }
    };
    let mut outcome = TerminateOutcome::default();
    let Some(gate) = found else {
        outcome.notes.push(format!(
            "database {:?} was dropped while it was being drained",
            step.database
        ));
        return Ok(outcome);
    };
    outcome.notes.push(format!(
        "drained {:?}: gate before {}, now closed; {}",
        step.database,
        gate_text(&gate),
        match step.until {
            Some(until) => format!("until {}", until.to_rfc3339()),
            None => "until lifted (permanent)".to_owned(),
        }
    ));
    outcome.absorb(end_sessions(ctx, engine, &step, &selector).await?);
    if !ended_by_gate.is_empty() {
        let still: Vec<Session> = engine
            .list(&selector, false)
            .await?
            .into_iter()
            .map(|l| l.session)
            .collect();
        let gone: Vec<Session> = ended_by_gate
            .into_iter()
            .filter(|s| !still.iter().any(|n| same_session(n, s)))
            .filter(|s| !outcome.terminated.iter().any(|t| same_session(t, s)))
            .collect();
        let protected = gone
            .iter()
            .filter(|s| s.login.as_ref().is_some_and(|l| step.protected.contains(l)))
            .count();
        outcome.notes.push(format!(
            "{} session(s) were ended by closing the gate (ROLLBACK IMMEDIATE), {protected} \
             of them of protected logins: the engine spares no one but administrators",
            gone.len()
        ));
        outcome.matched.extend(gone.iter().cloned());
        outcome.terminated.extend(gone);
    }
    Ok(outcome)
}

/// Ends the sessions `selector` selects in the step's database, in the plan's mode; sessions
/// of other databases are left out of the report.
pub(super) async fn end_sessions(
    ctx: &Context,
    engine: &dyn Engine,
    step: &DrainStep<'_>,
    selector: &Selector,
) -> Result<TerminateOutcome, EngineError> {
    let request = SelectRequest {
        selector: selector.clone(),
        // The selector names no login, but the database narrows it: not the every-login
        // guard, which would refuse a database holding all of the target's sessions.
        all_logins: false,
        ending: step.plan.ending,
        protected: step.protected.clone(),
        dry_run: false,
        verify_timeout: ctx.config.termination.verify_timeout,
        at_most: None,
        journal: step.journal.clone(),
        pick: None,
    };
    let mut outcome = end_selected(engine, &request).await?;
    // Sessions of other databases are not the drain's business.
    let other_database = SkipReason::Excluded("databases".into());
    outcome.skipped.retain(|s| s.reason != other_database);
    Ok(outcome)
}

/// Closes the database's gate. Where closing ends sessions itself (SQL Server's
/// `RESTRICTED_USER … ROLLBACK IMMEDIATE`), lists them first so each is recorded, and refuses
/// when a protected login has a session there: the engine would end it too.
async fn close(
    engine: &dyn Engine,
    step: &DrainStep<'_>,
    selector: &Selector,
) -> Result<(Vec<Session>, Option<DatabaseGate>), EngineError> {
    let ended_by_gate = match engine.closing_ends_sessions() {
        false => Vec::new(),
        true => {
            let listed = engine.list(selector, false).await?;
            let protected_here: BTreeSet<&str> = listed
                .iter()
                .filter(|l| l.session.database.as_deref() == Some(step.database))
                .filter_map(|l| l.session.login.as_deref())
                .filter(|login| step.protected.contains(*login))
                .collect();
            if !protected_here.is_empty() {
                return Err(EngineError::Refused(format!(
                    "protected login(s) {protected_here:?} have sessions in {:?}: closing it \
                     on this engine ends every session but administrators', so the drain was \
                     not started",
                    step.database
                )));
            }
            let sessions: Vec<Session> = listed
                .into_iter()
                .filter(|l| l.decision == Decision::Selected && l.guard.is_none())
                .map(|l| l.session)
                .collect();
            record_intent(step.journal.as_deref(), &sessions).await?;
            sessions
        }
    };
    let found = engine.close_database(step.database).await?;
    Ok((ended_by_gate, found))
}

/// Ends drain `drain_id` on `target` and, if it was the database's last, re-opens it.
pub(super) async fn undrain(
    ctx: &Context,
    engine: &dyn Engine,
    drain_id: Uuid,
    target: &str,
    database: &str,
    ended_by: &str,
) -> Result<TerminateOutcome, EngineError> {
    // The accounts a lock_accounts drain locked are restored first: should that fail, the
    // drain stays in force and the retried re-open tries again.
    let mut outcome =
        super::drain_accounts::unlock_accounts(ctx, engine, drain_id, target, ended_by).await?;
    let ended = ctx
        .store
        .end_drain(&drain_id.to_string(), target, ended_by, Utc::now())
        .await
        .map_err(store_error)?;
    let note = match ended {
        Drained::StillDrained(n) => {
            format!("{database:?} stays drained: {n} other drain(s) of it are still in force")
        }
        Drained::Nothing => format!("nothing to re-open for {database:?}"),
        Drained::Restore(kept) => {
            let before: DatabaseGate = serde_json::from_str(&kept)
                .map_err(|e| EngineError::Config(format!("the kept gate is unreadable: {e}")))?;
            let accounts = before == super::drain_accounts::accounts_marker();
            let reopened = match accounts {
                // No database gate was closed: the accounts were restored above.
                true => Reopened::Restored,
                false => engine.reopen_database(database, &before).await?,
            };
            let note = match reopened {
                Reopened::Restored if accounts => {
                    format!("re-opened {database:?}: its accounts' locks ended")
                }
                Reopened::Restored => {
                    format!("re-opened {database:?}: restored {}", gate_text(&before))
                }
                Reopened::Gone => format!("{database:?} is gone: nothing to re-open"),
                Reopened::Changed { now } => format!(
                    "{database:?} was changed by someone else while drained (now {}); left as \
                     found, not restored to {}",
                    gate_text(&now),
                    gate_text(&before)
                ),
            };
            ctx.store
                .forget_database_gate(target, database)
                .await
                .map_err(store_error)?;
            note
        }
    };
    outcome.notes.push(note);
    Ok(outcome)
}
