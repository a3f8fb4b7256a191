//! What the queue shows: an action's status and report, waiting for it to finish, the
//! targets with steps waiting, its depth, and pruning finished actions.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{
    ActionFilter, ActionStatus, ActionSummary, Depth, Queue, QueueError, StepStatus, at, from_json,
};
use crate::action::{ActionReport, Plan};

/// Whether an action waits for its time, as SQL over `actions` with `now` bound at `$now`:
/// a step pending, never attempted and due later. The one rule behind `status=scheduled`
/// and the `scheduled` flag of an action's status.
macro_rules! waiting_for_its_time {
    ($now:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM action_steps s WHERE s.action_id = actions.action_id \
             AND s.state = 'pending' AND s.attempts = 0 AND s.next_attempt_at > ",
            $now,
            ")"
        )
    };
}

impl Queue {
    /// Targets with pending steps, each with whether any of them waits for a retry a probe
    /// may bring forward (one whose last failure will recur does not).
    pub async fn waiting_targets(&self) -> Result<Vec<(String, bool)>, QueueError> {
        let rows = sqlx::query(
            "SELECT target, MAX(CASE WHEN attempts > 0 AND next_attempt_at > $1 \
               AND (failure IS NULL OR failure <> 'deterministic') THEN 1 ELSE 0 END) AS retrying \
             FROM action_steps WHERE state = 'pending' GROUP BY target",
        )
        .bind(at(Utc::now()))
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("target")?, r.try_get::<i32, _>("retrying")? > 0)))
            .collect()
    }

    /// How deep the queue is now: pending steps that are due (waiting or running), those
    /// scheduled for later, and when the oldest due one became due. One indexed query, for
    /// the metrics collector's tick.
    pub async fn depth(&self) -> Result<Depth, QueueError> {
        let row = sqlx::query(
            "SELECT COUNT(CASE WHEN next_attempt_at <= $1 THEN 1 END) AS due, \
               COUNT(CASE WHEN next_attempt_at > $1 THEN 1 END) AS later, \
               MIN(CASE WHEN next_attempt_at <= $1 THEN next_attempt_at END) AS oldest \
             FROM action_steps WHERE state = 'pending'",
        )
        .bind(at(Utc::now()))
        .fetch_one(self.store.pool())
        .await?;
        let oldest: Option<String> = row.try_get("oldest")?;
        Ok(Depth {
            due: u64::try_from(row.try_get::<i64, _>("due")?).unwrap_or_default(),
            scheduled: u64::try_from(row.try_get::<i64, _>("later")?).unwrap_or_default(),
            oldest_due: oldest.as_deref().map(super::parse_time).transpose()?,
        })
    }

    /// Makes the steps waiting on `target` for a retry due now (the target answered again),
    /// except those whose last failure will recur: they keep their backoff. A step not yet
    /// attempted keeps its due time: it is scheduled (a lock's expiry), not waiting.
    pub async fn target_back(&self, target: &str) -> Result<u64, QueueError> {
        let now = at(Utc::now());
        let n = sqlx::query(
            "UPDATE action_steps SET next_attempt_at = $2 \
             WHERE target = $1 AND state = 'pending' AND next_attempt_at > $2 AND attempts > 0 \
               AND (failure IS NULL OR failure <> 'deterministic')",
        )
        .bind(target)
        .bind(&now)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        if n > 0 {
            self.wake.notify_one();
        }
        Ok(n)
    }

    /// Drops actions that finished before `before`, with their steps; returns how many.
    pub async fn prune_finished(&self, before: DateTime<Utc>) -> Result<u64, QueueError> {
        let before = at(before);
        let mut tx = self.store.begin_write().await?;
        sqlx::query(
            "DELETE FROM action_steps WHERE action_id IN \
             (SELECT action_id FROM actions WHERE finished_at < $1)",
        )
        .bind(&before)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query("DELETE FROM actions WHERE finished_at < $1")
            .bind(&before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// The finished report of `action_id`, if it has finished.
    pub async fn report(&self, action_id: Uuid) -> Result<Option<ActionReport>, QueueError> {
        let row = sqlx::query("SELECT report FROM actions WHERE action_id = $1")
            .bind(action_id.to_string())
            .fetch_optional(self.store.pool())
            .await?;
        match row.and_then(|r| r.try_get::<Option<String>, _>("report").ok().flatten()) {
            Some(text) => Ok(Some(from_json("report", &text)?)),
            None => Ok(None),
        }
    }

    /// Waits up to `budget` for `action_id`, which this process just accepted, to finish
    /// (here or on another replica). A finish here is announced with its report, so the
    /// store is read only when the announcement was missed and to see another replica's
    /// finish, every `poll_interval`.
    pub async fn wait(
        &self,
        action_id: Uuid,
        budget: Duration,
    ) -> Result<Option<ActionReport>, QueueError> {
        let mut finished = self.finished.subscribe();
        // Finished here before the subscription: announced already.
        if let Some(report) = self.recently_finished(action_id) {
            return Ok(Some(report));
        }
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            // Another replica's completion is only seen by polling.
            let poll = tokio::time::sleep(self.config.poll_interval);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => return self.report(action_id).await,
                    () = &mut poll => break,
                    done = finished.recv() => match done {
                        Ok((id, report)) if id == action_id => {
                            return Ok(Some(report.as_ref().clone()));
                        }
                        Ok(_) => {}
                        // Announcements were missed: this one may have been among them.
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => (&mut poll).await,
                    },
                }
            }
            if let Some(report) = self.report(action_id).await? {
                return Ok(Some(report));
            }
            // Read just now: not again at the deadline, when the budget was one poll.
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// An action's plan, actor and status (`running`, `completed`, …), or `None` if there
    /// is no such action.
    pub async fn stored_plan(
        &self,
        action_id: Uuid,
    ) -> Result<Option<(Plan, String, String)>, QueueError> {
        let Some(row) = sqlx::query("SELECT plan, actor, status FROM actions WHERE action_id = $1")
            .bind(action_id.to_string())
            .fetch_optional(self.store.pool())
            .await?
        else {
            return Ok(None);
        };
        let plan = from_json("plan", &row.try_get::<String, _>("plan")?)?;
        Ok(Some((plan, row.try_get("actor")?, row.try_get("status")?)))
    }

    /// An action's state, or `None` if there is no such action.
    pub async fn status(&self, action_id: Uuid) -> Result<Option<ActionStatus>, QueueError> {
        let id = action_id.to_string();
        let Some(row) = sqlx::query(concat!(
            // A number, not a boolean: SQLite has no boolean type to decode.
            "SELECT actor, created_at, deadline, status, finished_at, report, \
             CAST(CASE WHEN ",
            waiting_for_its_time!("$2"),
            " THEN 1 ELSE 0 END AS BIGINT) AS waiting FROM actions WHERE action_id = $1"
        ))
        .bind(&id)
        .bind(at(chrono::Utc::now()))
        .fetch_optional(self.store.pool())
        .await?
        else {
            return Ok(None);
        };
        let steps = self.step_statuses(&id).await?;
        let report: Option<String> = row.try_get("report")?;
        let status: String = row.try_get("status")?;
        let waiting = row.try_get::<i64, _>("waiting")? != 0;
        Ok(Some(ActionStatus {
            action_id: id,
            scheduled: waiting && status == "running",
            status,
            actor: row.try_get("actor")?,
            created_at: row.try_get("created_at")?,
            retry_until: row.try_get("deadline")?,
            finished_at: row.try_get("finished_at")?,
            steps,
            report: report.map(|r| from_json("report", &r)).transpose()?,
        }))
    }

    /// Actions, newest first, filtered; at most `filter.limit`. Action ids are UUIDv7, so
    /// ordering by id is ordering by acceptance, and `before` (an id) pages back from it.
    pub async fn list(&self, filter: &ActionFilter) -> Result<Vec<ActionSummary>, QueueError> {
        // `scheduled`: running, and waiting for its time (no step attempted, one due later).
        let scheduled = filter.status.as_deref() == Some("scheduled");
        let status = if scheduled {
            Some("running")
        } else {
            filter.status.as_deref()
        };
        let rows = sqlx::query(concat!(
            "SELECT action_id, origin, actor, status, created_at, finished_at FROM actions \
             WHERE ($1 IS NULL OR origin = $1) AND ($2 IS NULL OR actor = $2) \
               AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR created_at >= $4) \
               AND ($5 IS NULL OR action_id < $5) AND ($7 IS NULL OR ",
            waiting_for_its_time!("$7"),
            ") ORDER BY action_id DESC LIMIT $6"
        ))
        .bind(filter.origin.as_deref())
        .bind(filter.actor.as_deref())
        .bind(status)
        .bind(filter.since.map(at))
        .bind(filter.before.map(|id| id.to_string()))
        .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
        .bind(scheduled.then(|| at(chrono::Utc::now())))
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ActionSummary {
                    action_id: r.try_get("action_id")?,
                    origin: r.try_get("origin")?,
                    actor: r.try_get("actor")?,
                    status: r.try_get("status")?,
                    created_at: r.try_get("created_at")?,
                    finished_at: r.try_get("finished_at")?,
                })
            })
            .collect()
    }

    /// The state of each of `action_id`'s steps, in the plan's order.
    async fn step_statuses(&self, action_id: &str) -> Result<Vec<StepStatus>, QueueError> {
        let steps = sqlx::query(
            "SELECT target, state, attempts, last_error, failure, next_attempt_at, lease_owner, \
               lease_until \
             FROM action_steps WHERE action_id = $1 ORDER BY position",
        )
        .bind(action_id)
        .fetch_all(self.store.pool())
        .await?;
        let now = at(Utc::now());
        let steps = steps
            .iter()
            .map(|s| {
                let state: String = s.try_get("state")?;
                let pending = state == "pending";
                let lease_until: Option<String> = s.try_get("lease_until")?;
                let leased = lease_until.is_some_and(|u| u > now);
                Ok(StepStatus {
                    target: s.try_get("target")?,
                    attempts: s.try_get("attempts")?,
                    last_error: s.try_get("last_error")?,
                    failure: s.try_get("failure")?,
                    next_attempt_at: if pending {
                        s.try_get("next_attempt_at")?
                    } else {
                        None
                    },
                    leased_by: if pending && leased {
                        s.try_get("lease_owner")?
                    } else {
                        None
                    },
                    state,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(steps)
    }
}
