//! Background verifications of the audit trail as stored: who asked, which replica runs
//! it, its heartbeat and, once finished, its outcome, so every replica can answer for it.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, timestamp};

/// One verification's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationRow {
    /// Its id.
    pub id: String,
    /// `running`, `ok`, `broken` or `failed`.
    pub status: String,
    /// The actor who asked (`operator:alice`).
    pub requested_by: String,
    /// The lease owner name of the replica running it.
    pub replica: String,
    /// When it started.
    pub started_at: String,
    /// When its replica last said it was still at it.
    pub heartbeat_at: String,
    /// When it finished.
    pub finished_at: Option<String>,
    /// The report as JSON, once `ok` or `broken`.
    pub report: Option<String>,
    /// Why it failed, once `failed`.
    pub error: Option<String>,
}

/// How a verification ended.
#[derive(Debug, Clone)]
pub struct VerificationEnd {
    /// `ok`, `broken` or `failed`.
    pub status: &'static str,
    /// The report as JSON.
    pub report: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The columns every read selects, in [`decode`]'s order (sqlx wants static SQL text).
macro_rules! verification_columns {
    () => {
        "id, status, requested_by, replica, started_at, heartbeat_at, finished_at, report, error"
    };
}

fn decode(r: &AnyRow) -> Result<VerificationRow, sqlx::Error> {
    Ok(VerificationRow {
        id: r.try_get(0)?,
        status: r.try_get(1)?,
        requested_by: r.try_get(2)?,
        replica: r.try_get(3)?,
        started_at: r.try_get(4)?,
        heartbeat_at: r.try_get(5)?,
        finished_at: r.try_get(6)?,
        report: r.try_get(7)?,
        error: r.try_get(8)?,
    })
}

impl Store {
    /// Records verification `id` as running on `replica`, asked for by `requested_by`.
    pub async fn start_verification(
        &self,
        id: &str,
        requested_by: &str,
        replica: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO audit_verifications \
             (id, status, requested_by, replica, started_at, heartbeat_at) \
             VALUES ($1, 'running', $2, $3, $4, $4)",
        )
        .bind(id)
        .bind(requested_by)
        .bind(replica)
        .bind(timestamp(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Refreshes a running verification's heartbeat.
    pub async fn beat_verification(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE audit_verifications SET heartbeat_at = $2 \
             WHERE id = $1 AND status = 'running'",
        )
        .bind(id)
        .bind(timestamp(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records how a verification ended.
    pub async fn finish_verification(
        &self,
        id: &str,
        end: &VerificationEnd,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE audit_verifications SET status = $2, finished_at = $3, heartbeat_at = $3, \
             report = $4, error = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(end.status)
        .bind(timestamp(now))
        .bind(&end.report)
        .bind(&end.error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Verification `id`, if there is one.
    pub async fn verification(&self, id: &str) -> Result<Option<VerificationRow>, StoreError> {
        let sql = concat!(
            "SELECT ",
            verification_columns!(),
            " FROM audit_verifications WHERE id = $1"
        );
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(decode).transpose()?)
    }

    /// The newest `limit` verifications, newest first.
    pub async fn recent_verifications(
        &self,
        limit: i64,
    ) -> Result<Vec<VerificationRow>, StoreError> {
        let sql = concat!(
            "SELECT ",
            verification_columns!(),
            " FROM audit_verifications ORDER BY started_at DESC, id DESC LIMIT $1"
        );
        let rows = sqlx::query(sql).bind(limit).fetch_all(self.pool()).await?;
        Ok(rows.iter().map(decode).collect::<Result<_, _>>()?)
    }
}
