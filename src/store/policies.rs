//! Policies as stored: when each is next due (a claim on that moment is what makes replicas
//! run one evaluation, not one each), its last evaluation, its run of evaluations that ended
//! sessions, and its pause; and the Alertmanager firings already acted on.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, timestamp};

/// A policy's stored state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// The policy.
    pub name: String,
    /// When it is next evaluated.
    pub next_due: String,
    /// Its last evaluation: when, what came of it, its action, sessions matched and ended,
    /// and the error of a target that failed.
    pub last: Option<LastEvaluation>,
    /// Evaluations in a row that ended sessions.
    pub streak: i64,
    /// When it paused itself, and why; `None` while it runs.
    pub paused: Option<(String, String)>,
}

/// The last evaluation of a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastEvaluation {
    /// When.
    pub at: String,
    /// `fired`, `observed`, `no_match`, `below_threshold`, `outside_window`, `paused`,
    /// `error`.
    pub outcome: String,
    /// The action it created, if it matched.
    pub action_id: Option<String>,
    /// Sessions it selected as victims.
    pub matched: i64,
    /// Sessions it ended.
    pub ended: i64,
    /// What failed, if a target did.
    pub error: Option<String>,
}

/// What recording an evaluation did to the policy's run of evaluations that end sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    /// Evaluations in a row that ended sessions, this one included.
    pub runs: i64,
    /// This evaluation paused the policy.
    pub paused_now: bool,
}

impl Store {
    /// Makes sure `name` has a row, first due at `first_due`; its next due moment.
    pub async fn schedule_policy(
        &self,
        name: &str,
        first_due: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO policy_state (name, next_due) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(timestamp(first_due))
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT next_due FROM policy_state WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row.try_get(0)?)
    }

    /// Claims the evaluation of `name` that is due at `now`, moving its next due moment to
    /// `next`: `true` for exactly one caller, whichever replica gets there first.
    pub async fn claim_policy(
        &self,
        name: &str,
        now: DateTime<Utc>,
        next: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let moved =
            sqlx::query("UPDATE policy_state SET next_due = $2 WHERE name = $1 AND next_due <= $3")
                .bind(name)
                .bind(timestamp(next))
                .bind(timestamp(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(moved == 1)
    }

    /// Records an evaluation of `name`. One that ended sessions lengthens its run, any
    /// other ends it; a run reaching `pause_after` pauses the policy, in the same write.
    pub async fn record_policy_evaluation(
        &self,
        name: &str,
        last: &LastEvaluation,
        pause_after: u32,
    ) -> Result<Streak, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT streak, paused_at FROM policy_state WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let (streak, paused): (i64, Option<String>) = match &row {
            Some(row) => (row.try_get(0)?, row.try_get(1)?),
            None => (0, None),
        };
        let runs = if last.ended > 0 { streak + 1 } else { 0 };
        let paused_now = paused.is_none() && runs >= i64::from(pause_after);
        let reason = paused_now.then(|| {
            format!("it ended sessions in {runs} evaluations in a row; an operator resumes it")
        });
        sqlx::query(
            "INSERT INTO policy_state (name, next_due, last_at, last_outcome, last_action, \
             last_matched, last_ended, last_error, streak, paused_at, paused_reason) \
             VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (name) DO UPDATE SET last_at = $2, last_outcome = $3, \
             last_action = $4, last_matched = $5, last_ended = $6, last_error = $7, \
             streak = $8, \
             paused_at = COALESCE(policy_state.paused_at, $9), \
             paused_reason = COALESCE(policy_state.paused_reason, $10)",
        )
        .bind(name)
        .bind(&last.at)
        .bind(&last.outcome)
        .bind(&last.action_id)
        .bind(last.matched)
        .bind(last.ended)
        .bind(&last.error)
        .bind(runs)
        .bind(paused_now.then(|| last.at.clone()))
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Streak { runs, paused_now })
    }

    /// Resumes a paused policy and starts its run afresh; `false` if it was not paused.
    pub async fn resume_policy(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let resumed = sqlx::query(
            "UPDATE policy_state SET paused_at = NULL, paused_reason = NULL, streak = 0 \
             WHERE name = $1 AND paused_at IS NOT NULL",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(resumed == 1)
    }

    /// Every stored policy's state, by name.
    pub async fn policy_states(&self) -> Result<Vec<PolicyState>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, next_due, last_at, last_outcome, last_action, last_matched, \
             last_ended, last_error, streak, paused_at, paused_reason FROM policy_state \
             ORDER BY name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let last_at: Option<String> = row.try_get(2)?;
                let last = match last_at {
                    None => None,
                    Some(at) => Some(LastEvaluation {
                        at,
                        outcome: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                        action_id: row.try_get(4)?,
                        matched: row.try_get(5)?,
                        ended: row.try_get(6)?,
                        error: row.try_get(7)?,
                    }),
                };
                let paused_at: Option<String> = row.try_get(9)?;
                let paused_reason: Option<String> = row.try_get(10)?;
                Ok(PolicyState {
                    name: row.try_get(0)?,
                    next_due: row.try_get(1)?,
                    last,
                    streak: row.try_get(8)?,
                    paused: paused_at.map(|at| (at, paused_reason.unwrap_or_default())),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Records a firing alert as acted on by `action_id` (none when it ran nothing): `true`
    /// the first time `key` is seen, `false` for a re-delivery.
    pub async fn claim_alert(&self, key: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO alert_firings (firing_key, received_at) VALUES ($1, $2) \
             ON CONFLICT (firing_key) DO NOTHING",
        )
        .bind(key)
        .bind(timestamp(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(inserted == 1)
    }

    /// Forgets a claimed firing whose policy could not be run, so a re-delivery tries again.
    pub async fn release_alert(&self, key: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM alert_firings WHERE firing_key = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops firings received before `before`; how many.
    pub async fn prune_alerts(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM alert_firings WHERE received_at < $1")
            .bind(timestamp(before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
}
