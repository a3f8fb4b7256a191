//! Login locks as stored: each lock on each target, and, while a login is locked, its gate
//! as it was before the first lock (JSON the engines wrote), which the last lock to end
//! restores. Locks on one login and target stack: only the first one's gate is kept.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, timestamp};

/// One lock on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRow {
    /// The lock's id (the action that took it).
    pub lock_id: String,
    /// Target id.
    pub target: String,
    /// The login kept out.
    pub login: String,
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

/// A new lock to record.
#[derive(Debug, Clone)]
pub struct NewLock<'a> {
    /// The lock's id.
    pub lock_id: &'a str,
    /// Target id.
    pub target: &'a str,
    /// The login.
    pub login: &'a str,
    /// Until when; `None` until lifted.
    pub until: Option<DateTime<Utc>>,
    /// Why.
    pub reason: &'a str,
    /// Who.
    pub actor: &'a str,
    /// The gate as read right before this lock closes it (JSON): kept only when no earlier
    /// lock on the login is still in force, so the first lock's view wins.
    pub gate_before: &'a str,
}

/// What ending a lock left to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Other locks on the login are still active: nothing to restore yet.
    StillLocked(usize),
    /// It was the last: restore this gate (JSON), then [`Store::forget_gate`].
    Restore(String),
    /// No gate is kept (never recorded, or already restored).
    Nothing,
}

impl Store {
    /// Records `lock` as active now, and the login's gate if none is kept, in one
    /// transaction. Recording the same lock again (a retried step) changes nothing, except
    /// that a lock whose closing failed (`ended_by = 'failed'`) is in force again.
    pub async fn begin_lock(
        &self,
        lock: &NewLock<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let now = timestamp(now);
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO locks (lock_id, target, login, since, until, reason, actor, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'active') ON CONFLICT (lock_id, target, login) \
             DO UPDATE SET state = 'active', ended_at = NULL, ended_by = NULL \
             WHERE locks.ended_by = 'failed'",
        )
        .bind(lock.lock_id)
        .bind(lock.target)
        .bind(lock.login)
        .bind(&now)
        .bind(lock.until.map(timestamp))
        .bind(lock.reason)
        .bind(lock.actor)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO login_gates (target, login, before, since) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (target, login) DO NOTHING",
        )
        .bind(lock.target)
        .bind(lock.login)
        .bind(lock.gate_before)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends lock `lock_id` of `login` on `target` (if still active) and says what is left to
    /// do: when it was the login's last active lock, the gate to restore. Safe to repeat: a
    /// retried restore finds the lock ended and the gate still kept. The login is part of the
    /// key because a drain with `lock_accounts` locks several logins under one id.
    pub async fn end_lock(
        &self,
        lock_id: &str,
        target: &str,
        login: &str,
        ended_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Ended, StoreError> {
        let mut tx = self.begin_write().await?;
        let known =
            sqlx::query("SELECT 1 FROM locks WHERE lock_id = $1 AND target = $2 AND login = $3")
                .bind(lock_id)
                .bind(target)
                .bind(login)
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_none() {
            tx.commit().await?;
            return Ok(Ended::Nothing);
        }
        sqlx::query(
            "UPDATE locks SET state = 'ended', ended_at = $4, ended_by = $5 \
             WHERE lock_id = $1 AND target = $2 AND login = $3 AND state = 'active'",
        )
        .bind(lock_id)
        .bind(target)
        .bind(login)
        .bind(timestamp(now))
        .bind(ended_by)
        .execute(&mut *tx)
        .await?;
        let active: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM locks WHERE target = $1 AND login = $2 AND state = 'active'",
        )
        .bind(target)
        .bind(login)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        let gate: Option<String> =
            sqlx::query("SELECT before FROM login_gates WHERE target = $1 AND login = $2")
                .bind(target)
                .bind(login)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("before"))
                .transpose()?;
        tx.commit().await?;
        Ok(match (active, gate) {
            (n, _) if n > 0 => Ended::StillLocked(usize::try_from(n).unwrap_or(usize::MAX)),
            (_, Some(gate)) => Ended::Restore(gate),
            (_, None) => Ended::Nothing,
        })
    }

    /// Forgets `login`'s kept gate on `target` once it is restored, unless a new lock began
    /// meanwhile (it keeps the gate it found, which is the one to restore later).
    pub async fn forget_gate(&self, target: &str, login: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM login_gates WHERE target = $1 AND login = $2 AND NOT EXISTS \
             (SELECT 1 FROM locks WHERE target = $1 AND login = $2 AND state = 'active')",
        )
        .bind(target)
        .bind(login)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every lock, or those of one lock id, active ones first, newest first.
    pub async fn locks(&self, lock_id: Option<&str>) -> Result<Vec<LockRow>, StoreError> {
        self.locks_where(lock_id, false).await
    }

    /// The locks in force (readiness reads these often; ended ones pile up).
    pub async fn active_locks(&self) -> Result<Vec<LockRow>, StoreError> {
        self.locks_where(None, true).await
    }

    /// The locks (of one id, if given), only those in force when `active_only`.
    pub async fn locks_where(
        &self,
        lock_id: Option<&str>,
        active_only: bool,
    ) -> Result<Vec<LockRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT lock_id, target, login, since, until, reason, actor, state, ended_at, ended_by \
             FROM locks WHERE ($1 IS NULL OR lock_id = $1) AND ($2 = 0 OR state = 'active') \
             ORDER BY CASE state WHEN 'active' THEN 0 ELSE 1 END, since DESC, target",
        )
        .bind(lock_id)
        .bind(i32::from(active_only))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let ended_at: Option<String> = r.try_get("ended_at")?;
                let ended_by: Option<String> = r.try_get("ended_by")?;
                Ok(LockRow {
                    lock_id: r.try_get("lock_id")?,
                    target: r.try_get("target")?,
                    login: r.try_get("login")?,
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

    /// Logins whose gate is kept with no active lock left: a restore still to be done
    /// (failing, or not yet run), as (target, login, since).
    pub async fn pending_restores(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.target, g.login, g.since FROM login_gates g WHERE NOT EXISTS \
             (SELECT 1 FROM locks l WHERE l.target = g.target AND l.login = g.login \
              AND l.state = 'active') ORDER BY g.since",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("target")?,
                    r.try_get("login")?,
                    r.try_get("since")?,
                ))
            })
            .collect()
    }
}
