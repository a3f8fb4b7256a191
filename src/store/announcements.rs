//! Announcements of scheduled actions as stored: due, made (with the notifications that
//! carry them) or called off. Claimed by a conditional update, so replicas announce once.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, timestamp};

/// One action's announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncementRow {
    /// The action.
    pub action_id: String,
    /// When it is (or was) due.
    pub announce_at: String,
    /// When the action acts.
    pub act_at: String,
    /// `pending`, `made` or `cancelled`.
    pub state: String,
    /// The outbox notifications it went out as (JSON array of ids), once made.
    pub notifications: Option<String>,
}

impl Store {
    /// Records that `action_id` is to be announced at `announce_at`, acting at `act_at`.
    pub async fn plan_announcement(
        &self,
        action_id: &str,
        announce_at: DateTime<Utc>,
        act_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO announcements (action_id, announce_at, act_at, state) \
             VALUES ($1, $2, $3, 'pending') ON CONFLICT (action_id) DO NOTHING",
        )
        .bind(action_id)
        .bind(timestamp(announce_at))
        .bind(timestamp(act_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Announcements due at `now` and not yet made, oldest first (at most `limit`).
    pub async fn due_announcements(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT action_id FROM announcements WHERE state = 'pending' AND announce_at <= $1 \
             ORDER BY announce_at LIMIT $2",
        )
        .bind(timestamp(now))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// Moves `action_id`'s announcement from pending to made: `true` for exactly one caller.
    pub async fn claim_announcement(
        &self,
        action_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE announcements SET state = 'made', made_at = $2 \
             WHERE action_id = $1 AND state = 'pending'",
        )
        .bind(action_id)
        .bind(timestamp(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Remembers the notifications a made announcement went out as (JSON array of ids).
    pub async fn set_announcement_notifications(
        &self,
        action_id: &str,
        ids: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE announcements SET notifications = $2 WHERE action_id = $1")
            .bind(action_id)
            .bind(ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// `action_id`'s announcement, if it has one.
    pub async fn announcement(
        &self,
        action_id: &str,
    ) -> Result<Option<AnnouncementRow>, StoreError> {
        let row = sqlx::query(
            "SELECT action_id, announce_at, act_at, state, notifications FROM announcements \
             WHERE action_id = $1",
        )
        .bind(action_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(AnnouncementRow {
                action_id: r.try_get(0)?,
                announce_at: r.try_get(1)?,
                act_at: r.try_get(2)?,
                state: r.try_get(3)?,
                notifications: r.try_get(4)?,
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| StoreError::from(e))
    }

    /// Calls off `action_id`'s announcement; the state it had (`pending` or `made`), or
    /// `None` when there was none to call off.
    pub async fn cancel_announcement(&self, action_id: &str) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        let before: Option<String> =
            sqlx::query("SELECT state FROM announcements WHERE action_id = $1")
                .bind(action_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        if matches!(before.as_deref(), Some("pending" | "made")) {
            sqlx::query("UPDATE announcements SET state = 'cancelled' WHERE action_id = $1")
                .bind(action_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(before.filter(|s| s != "cancelled"))
    }
}
