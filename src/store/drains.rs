//! Database drains as stored: each drain, and, while a database is drained, its gate as it
//! was before the first drain (JSON the engines wrote), which the last drain to end restores.
//! Drains of one database and target stack like locks: only the first one's gate is kept.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, timestamp};

/// One drain on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainRow {
    /// The drain's id (the action that took it).
    pub drain_id: String,
    /// Target id.
    pub target: String,
    /// The database kept out.
    pub database: String,
    /// When it began.
    pub since: String,
    /// When it ends by itself; `None` until lifted.
    pub until: Option<String>,
    /// Why, as given.
    pub reason: String,
    /// Who took it.
    pub actor: String,
    /// `active` or `ended`.
    pub state: String,
    /// When it ended, and who or what ended it (`expiry`, `operator:…`).
    pub ended: Option<(String, String)>,
}

/// A new drain to record.
#[derive(Debug, Clone)]
pub struct NewDrain<'a> {
    /// The drain's id.
    pub drain_id: &'a str,
    /// Target id.
    pub target: &'a str,
    /// The database.
    pub database: &'a str,
    /// Until when; `None` until lifted.
    pub until: Option<DateTime<Utc>>,
    /// Why.
    pub reason: &'a str,
    /// Who.
    pub actor: &'a str,
    /// The gate as read right before this drain closes it (JSON): kept only when no earlier
    /// drain on the database is still in force, so the first drain's view wins.
    pub gate_before: &'a str,
}

/// What ending a drain left to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    /// Other drains on the database are still active: nothing to restore yet.
    StillDrained(usize),
    /// It was the last: restore this gate (JSON), then [`Store::forget_database_gate`].
    Restore(String),
    /// No gate is kept (never recorded, or already restored).
    Nothing,
}

impl Store {
    /// Records `drain` as active now, and the database's gate if none is kept, in one
    /// transaction. Recording the same drain again (a retried step) changes nothing, except
    /// that a drain whose closing failed (`ended_by = 'failed'`) is in force again.
    pub async fn begin_drain(
        &self,
        drain: &NewDrain<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let now = timestamp(now);
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO drains (drain_id, target, dbname, since, until, reason, actor, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'active') ON CONFLICT (drain_id, target) \
             DO UPDATE SET state = 'active', ended_at = NULL, ended_by = NULL \
             WHERE drains.ended_by = 'failed'",
        )
        .bind(drain.drain_id)
        .bind(drain.target)
        .bind(drain.database)
        .bind(&now)
        .bind(drain.until.map(timestamp))
        .bind(drain.reason)
        .bind(drain.actor)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO database_gates (target, dbname, before, since) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (target, dbname) DO NOTHING",
        )
        .bind(drain.target)
        .bind(drain.database)
        .bind(drain.gate_before)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends drain `drain_id` on `target` (if still active) and says what is left to do: when it
    /// was the database's last active drain, the gate to restore. Safe to repeat: a retried
    /// restore finds the drain ended and the gate still kept.
    pub async fn end_drain(
        &self,
        drain_id: &str,
        target: &str,
        ended_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Drained, StoreError> {
        let mut tx = self.begin_write().await?;
        let database: Option<String> =
            sqlx::query("SELECT dbname FROM drains WHERE drain_id = $1 AND target = $2")
                .bind(drain_id)
                .bind(target)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("dbname"))
                .transpose()?;
        let Some(database) = database else {
            tx.commit().await?;
            return Ok(Drained::Nothing);
        };
        sqlx::query(
            "UPDATE drains SET state = 'ended', ended_at = $3, ended_by = $4 \
             WHERE drain_id = $1 AND target = $2 AND state = 'active'",
        )
        .bind(drain_id)
        .bind(target)
        .bind(timestamp(now))
        .bind(ended_by)
        .execute(&mut *tx)
        .await?;
        let active: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM drains WHERE target = $1 AND dbname = $2 AND state = 'active'",
        )
        .bind(target)
        .bind(&database)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        let gate: Option<String> =
            sqlx::query("SELECT before FROM database_gates WHERE target = $1 AND dbname = $2")
                .bind(target)
                .bind(&database)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("before"))
                .transpose()?;
        tx.commit().await?;
        Ok(match (active, gate) {
            (n, _) if n > 0 => Drained::StillDrained(usize::try_from(n).unwrap_or(usize::MAX)),
            (_, Some(gate)) => Drained::Restore(gate),
            (_, None) => Drained::Nothing,
        })
    }

    /// Forgets `database`'s kept gate on `target` once it is restored, unless a new drain began
    /// meanwhile (it keeps the gate it found, which is the one to restore later).
    pub async fn forget_database_gate(
        &self,
        target: &str,
        database: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM database_gates WHERE target = $1 AND dbname = $2 AND NOT EXISTS \
             (SELECT 1 FROM drains WHERE target = $1 AND dbname = $2 AND state = 'active')",
        )
        .bind(target)
        .bind(database)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every drain, or those of one drain id, active ones first, newest first.
    pub async fn drains(&self, drain_id: Option<&str>) -> Result<Vec<DrainRow>, StoreError> {
        self.drains_where(drain_id, false).await
    }

    /// The drains in force (readiness reads these often; ended ones pile up).
    pub async fn active_drains(&self) -> Result<Vec<DrainRow>, StoreError> {
        self.drains_where(None, true).await
    }

    /// The drains (of one id, if given), only those in force when `active_only`.
    pub async fn drains_where(
        &self,
        drain_id: Option<&str>,
        active_only: bool,
    ) -> Result<Vec<DrainRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT drain_id, target, dbname, since, until, reason, actor, state, ended_at, ended_by \
             FROM drains WHERE ($1 IS NULL OR drain_id = $1) AND ($2 = 0 OR state = 'active') \
             ORDER BY CASE state WHEN 'active' THEN 0 ELSE 1 END, since DESC, target",
        )
        .bind(drain_id)
        .bind(i32::from(active_only))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let ended_at: Option<String> = r.try_get("ended_at")?;
                let ended_by: Option<String> = r.try_get("ended_by")?;
                Ok(DrainRow {
                    drain_id: r.try_get("drain_id")?,
                    target: r.try_get("target")?,
                    database: r.try_get("dbname")?,
                    since: r.try_get("since")?,
                    until: r.try_get("until")?,
                    reason: r.try_get("reason")?,
                    actor: r.try_get("actor")?,
                    state: r.try_get("state")?,
                    ended: ended_at.zip(ended_by),
                })
            })
            .collect()
    }

    /// Databases whose gate is kept with no active drain left: a restore still to be done
    /// (failing, or not yet run), as (target, database, since).
    pub async fn pending_reopens(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.target, g.dbname, g.since FROM database_gates g WHERE NOT EXISTS \
             (SELECT 1 FROM drains l WHERE l.target = g.target AND l.dbname = g.dbname \
              AND l.state = 'active') ORDER BY g.since",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("target")?,
                    r.try_get("dbname")?,
                    r.try_get("since")?,
                ))
            })
            .collect()
    }
}
