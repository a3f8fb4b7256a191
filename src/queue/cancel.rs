//! Calling off an action that has not acted yet (a scheduled one, waiting for its time or
//! window): its steps are never claimed, it finishes as `cancelled`, audited with who and
//! why, all in one transaction. An action any of whose steps has begun cannot be called off.

use async_trait::async_trait;
use chrono::Utc;
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use super::{Queue, QueueError, at, from_json, status_name, to_json};
use crate::action::{self, ActionReport, Plan, Status};
use crate::audit::{Audit, Decision, Entry, Kind, Transaction};

/// What calling an action off came to.
#[derive(Debug, Clone)]
pub enum Cancelled {
    /// Called off: its report (status `cancelled`) and its plan.
    Done(Box<(ActionReport, Plan)>),
    /// No action has this id.
    Unknown,
    /// It has finished already, with this status.
    Finished(String),
    /// A step of it has begun (or is running now): too late to call off.
    Started,
}

struct CancelTx<'a> {
    action_id: Uuid,
    actor: &'a str,
    reason: &'a str,
}

#[async_trait]
impl Transaction for CancelTx<'_> {
    type Output = Result<Cancelled, String>;

    async fn run(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<Decision<Self::Output>, sqlx::Error> {
        let id = self.action_id.to_string();
        let now = at(Utc::now());
        let Some(row) = sqlx::query("SELECT plan, status FROM actions WHERE action_id = $1")
            .bind(&id)
            .fetch_optional(&mut **tx)
            .await?
        else {
            return Ok(Decision::Rollback(Ok(Cancelled::Unknown)));
        };
        let status: String = row.try_get("status")?;
        if status != "running" {
            return Ok(Decision::Rollback(Ok(Cancelled::Finished(status))));
        }
        let plan: Plan = match from_json("plan", &row.try_get::<String, _>("plan")?) {
            Ok(plan) => plan,
            Err(e) => return Ok(Decision::Rollback(Err(e.to_string()))),
        };
        let begun: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM action_steps WHERE action_id = $1 \
             AND (state <> 'pending' OR attempts > 0 \
                  OR (lease_owner IS NOT NULL AND lease_until > $2))",
        )
        .bind(&id)
        .bind(&now)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
        if begun > 0 {
            return Ok(Decision::Rollback(Ok(Cancelled::Started)));
        }
        sqlx::query(
            "UPDATE action_steps SET state = 'cancelled', lease_owner = NULL, \
             lease_until = NULL WHERE action_id = $1 AND state = 'pending'",
        )
        .bind(&id)
        .execute(&mut **tx)
        .await?;
        let mut report = action::report(&plan, Vec::new());
        report.status = Status::Cancelled;
        sqlx::query(
            "UPDATE actions SET status = $2, finished_at = $3, report = $4 WHERE action_id = $1",
        )
        .bind(&id)
        .bind(status_name(report.status))
        .bind(&now)
        .bind(to_json(&report))
        .execute(&mut **tx)
        .await?;
        let entry = Entry::new(
            Kind::ActionCancelled,
            self.actor,
            Some(self.action_id),
            json!({"reason": self.reason, "origin": plan.origin.name(),
                   "act_at": plan.schedule.as_ref().map(|s| s.act_at)}),
        );
        Ok(Decision::Commit(
            vec![entry],
            Ok(Cancelled::Done(Box::new((report, plan)))),
        ))
    }
}

impl Queue {
    /// Calls off `action_id` if none of its steps has begun, recording `actor` and `reason`.
    pub async fn cancel(
        &self,
        audit: &Audit,
        action_id: Uuid,
        actor: &str,
        reason: &str,
    ) -> Result<Cancelled, QueueError> {
        let work = CancelTx {
            action_id,
            actor,
            reason,
        };
        let cancelled = audit.transact(&work).await?.map_err(QueueError::Corrupt)?;
        if let Cancelled::Done(done) = &cancelled {
            // Waiters (a `?wait=true` caller) learn it finished.
            self.announce(action_id, done.0.clone());
        }
        Ok(cancelled)
    }
}
