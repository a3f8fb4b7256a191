//! The outbox's SQL (table `notifications`, migration 0011): queueing a digest (folded into
//! a waiting row of its kind, or a new row, or dropped when the channel's outbox is full),
//! claiming due rows with an expiring lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so
//! replicas never send one row twice at once), the rate window, PagerDuty's triggered
//! incidents, dropped counts, pruning and depth. Outcomes are written by `deliver`, in the
//! audit's transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::content::Digest;
use crate::store::{Backend, Store, timestamp};

/// PostgreSQL advisory lock taken by every enqueue, so two replicas folding into the same
/// channel's rows take turns (the audit chain's own lock is 7262837).
const ENQUEUE_LOCK: i64 = 7262838;

/// A notification to queue for one channel.
pub struct NewRow<'a> {
    /// The channel.
    pub channel: &'a str,
    /// What folds with it (the event, or the event and PagerDuty dedup key).
    pub coalesce_key: String,
    /// PagerDuty's dedup key.
    pub subject: Option<String>,
    /// What it says.
    pub digest: Digest,
}

/// What became of a queued notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Folded into a waiting row, or in a new one: that row's id.
    Row(Uuid),
    /// The channel's outbox is full: dropped, and counted for the audit.
    Dropped,
}

/// The channel's bounds on queueing.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// One message per kind per this interval (zero: no folding).
    pub coalesce: Duration,
    /// Pending rows the channel may hold.
    pub max_outbox: u64,
}

fn at(d: DateTime<Utc>) -> String {
    timestamp(d)
}

fn parse(text: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| sqlx::Error::Decode(format!("timestamp {text:?}: {e}").into()))
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX / 2)
}

/// Takes the enqueue lock for the rest of the transaction on `conn` (PostgreSQL; SQLite's write lock is one).
pub async fn lock(conn: &mut sqlx::AnyConnection, backend: Backend) -> Result<(), sqlx::Error> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ENQUEUE_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Queues `row` in the transaction on `conn` (which holds [`lock`]): folds it into the channel's waiting,
/// never-attempted row of the same key, else inserts it (due at once, or when the last
/// message of its key is a coalescing interval old), unless the channel's outbox is full.
pub async fn put(
    conn: &mut sqlx::AnyConnection,
    row: NewRow<'_>,
    bounds: Bounds,
    now: DateTime<Utc>,
) -> Result<Queued, sqlx::Error> {
    if !bounds.coalesce.is_zero() {
        let open = sqlx::query(
            "SELECT id, content FROM notifications \
             WHERE channel = $1 AND coalesce_key = $2 AND state = 'pending' AND attempts = 0 \
               AND lease_owner IS NULL ORDER BY due_at LIMIT 1",
        )
        .bind(row.channel)
        .bind(&row.coalesce_key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(open) = open {
            let id: String = open.try_get("id")?;
            let content: String = open.try_get("content")?;
            if let Ok(mut digest) = serde_json::from_str::<Digest>(&content) {
                digest.fold(&row.digest);
                // Taken meanwhile by a worker (SQLite serialises this; PostgreSQL re-checks
                // the condition on the row it updates): then it gets a row of its own.
                let folded = sqlx::query(
                    "UPDATE notifications SET content = $2, folded = folded + 1 \
                     WHERE id = $1 AND attempts = 0 AND lease_owner IS NULL",
                )
                .bind(&id)
                .bind(to_json(&digest))
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if folded == 1 {
                    crate::telemetry::notification(row.channel, "folded");
                    return Ok(Queued::Row(Uuid::parse_str(&id).unwrap_or_default()));
                }
            }
        }
    }
    let pending: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM notifications WHERE channel = $1 AND state = 'pending'",
    )
    .bind(row.channel)
    .fetch_one(&mut *conn)
    .await?
    .try_get("n")?;
    if u64::try_from(pending).unwrap_or(0) >= bounds.max_outbox {
        sqlx::query(
            "INSERT INTO notification_drops (channel, event, dropped, since) \
             VALUES ($1, $2, 1, $3) \
             ON CONFLICT (channel, event) DO UPDATE \
             SET dropped = notification_drops.dropped + 1",
        )
        .bind(row.channel)
        .bind(row.digest.event.as_str())
        .bind(at(now))
        .execute(&mut *conn)
        .await?;
        crate::telemetry::notification(row.channel, "dropped");
        return Ok(Queued::Dropped);
    }
    let mut due = now;
    if !bounds.coalesce.is_zero() {
        let last: Option<String> = sqlx::query(
            "SELECT MAX(due_at) AS last FROM notifications \
             WHERE channel = $1 AND coalesce_key = $2",
        )
        .bind(row.channel)
        .bind(&row.coalesce_key)
        .fetch_one(&mut *conn)
        .await?
        .try_get("last")?;
        if let Some(last) = last {
            due = due.max(parse(&last)? + chrono(bounds.coalesce));
        }
    }
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO notifications (id, channel, event, coalesce_key, subject, created_at, \
         due_at, state, attempts, folded, content) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, 1, $8)",
    )
    .bind(id.to_string())
    .bind(row.channel)
    .bind(row.digest.event.as_str())
    .bind(&row.coalesce_key)
    .bind(&row.subject)
    .bind(at(now))
    .bind(at(due))
    .bind(to_json(&row.digest))
    .execute(&mut *conn)
    .await?;
    Ok(Queued::Row(id))
}

fn to_json(digest: &Digest) -> String {
    serde_json::to_string(digest).expect("a digest always serialises")
}

/// Whether a channel with an incident for `dedup_key` (or a trigger for it still queued)
/// has something to resolve.
pub async fn has_trigger(
    conn: &mut sqlx::AnyConnection,
    channel: &str,
    dedup_key: &str,
) -> Result<bool, sqlx::Error> {
    let open = sqlx::query(
        "SELECT 1 AS x FROM notification_incidents WHERE channel = $1 AND dedup_key = $2 \
         UNION ALL SELECT 1 AS x FROM notifications WHERE channel = $1 AND subject = $2",
    )
    .bind(channel)
    .bind(dedup_key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(open.is_some())
}

/// A row claimed for one attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Its id (the `webhook-id`).
    pub id: Uuid,
    /// Its PagerDuty dedup key.
    pub subject: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// Notices it stands for.
    pub folded: i64,
    /// What it says.
    pub digest: Digest,
}

const CLAIM_SQLITE: &str = "UPDATE notifications \
     SET lease_owner = $1, lease_until = $2, attempts = attempts + 1, last_attempt_at = $3 \
     WHERE id IN (SELECT id FROM notifications \
         WHERE channel = $4 AND state = 'pending' AND due_at <= $3 \
           AND (lease_until IS NULL OR lease_until < $3) \
         ORDER BY due_at LIMIT 1) \
     RETURNING id, subject, created_at, attempts, folded, content";

/// As [`CLAIM_SQLITE`], skipping a row another replica is claiming at this moment.
const CLAIM_POSTGRES: &str = "UPDATE notifications \
     SET lease_owner = $1, lease_until = $2, attempts = attempts + 1, last_attempt_at = $3 \
     WHERE id IN (SELECT id FROM notifications \
         WHERE channel = $4 AND state = 'pending' AND due_at <= $3 \
           AND (lease_until IS NULL OR lease_until < $3) \
         ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
     RETURNING id, subject, created_at, attempts, folded, content";

/// Claims `channel`'s next due row for `owner` for `lease`. A row whose content cannot be
/// read is given up at once.
pub async fn claim(
    store: &Store,
    channel: &str,
    owner: &str,
    lease: Duration,
) -> Result<Option<Claimed>, sqlx::Error> {
    let now = Utc::now();
    let sql = match store.backend() {
        Backend::Sqlite => CLAIM_SQLITE,
        Backend::Postgres => CLAIM_POSTGRES,
    };
    let Some(row) = sqlx::query(sql)
        .bind(owner)
        .bind(at(now + chrono(lease)))
        .bind(at(now))
        .bind(channel)
        .fetch_optional(store.pool())
        .await?
    else {
        return Ok(None);
    };
    let id: String = row.try_get("id")?;
    let content: String = row.try_get("content")?;
    let digest = match serde_json::from_str(&content) {
        Ok(digest) => digest,
        Err(e) => {
            tracing::error!(channel, notification_id = %id, error = %e,
                "an outbox row is unreadable; giving it up");
            sqlx::query(
                "UPDATE notifications SET state = 'given_up', finished_at = $2, \
                 last_error = 'unreadable content', lease_owner = NULL WHERE id = $1",
            )
            .bind(&id)
            .bind(at(now))
            .execute(store.pool())
            .await?;
            return Ok(None);
        }
    };
    Ok(Some(Claimed {
        id: Uuid::parse_str(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        subject: row.try_get("subject")?,
        created_at: parse(&row.try_get::<String, _>("created_at")?)?,
        attempts: row.try_get("attempts")?,
        folded: row.try_get("folded")?,
        digest,
    }))
}

/// Hands a claimed row back untried (shutdown interrupted its attempt).
pub async fn release(store: &Store, id: Uuid, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET lease_owner = NULL, lease_until = NULL \
         WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
    )
    .bind(id.to_string())
    .bind(owner)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Attempts `channel` made in the last minute (by any replica).
pub async fn attempts_last_minute(store: &Store, channel: &str) -> Result<u64, sqlx::Error> {
    let since = Utc::now() - chrono::Duration::seconds(60);
    let n: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM notifications WHERE channel = $1 AND last_attempt_at > $2",
    )
    .bind(channel)
    .bind(at(since))
    .fetch_one(store.pool())
    .await?
    .try_get("n")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Whether `channel` has an incident open for `dedup_key`.
pub async fn triggered(store: &Store, channel: &str, dedup_key: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "SELECT 1 AS x FROM notification_incidents WHERE channel = $1 AND dedup_key = $2",
    )
    .bind(channel)
    .bind(dedup_key)
    .fetch_optional(store.pool())
    .await?
    .is_some())
}

/// Skips `channel`'s triggers for `dedup_key` still waiting (not `except`): what they would
/// open is resolved already.
pub async fn supersede_triggers(
    store: &Store,
    channel: &str,
    dedup_key: &str,
    except: Uuid,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE notifications SET state = 'skipped', finished_at = $4, \
         last_error = 'resolved before it was sent' \
         WHERE channel = $1 AND subject = $2 AND id <> $3 AND state = 'pending' \
           AND lease_owner IS NULL",
    )
    .bind(channel)
    .bind(dedup_key)
    .bind(except.to_string())
    .bind(at(Utc::now()))
    .execute(store.pool())
    .await?
    .rows_affected())
}

/// Takes the dropped counts (channel, event, dropped, since) for the audit, in the transaction on `conn`.
pub async fn take_drops(
    conn: &mut sqlx::AnyConnection,
) -> Result<Vec<(String, String, i64, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT channel, event, dropped, since FROM notification_drops ORDER BY channel, event",
    )
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM notification_drops")
        .execute(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("channel")?,
                r.try_get("event")?,
                r.try_get("dropped")?,
                r.try_get("since")?,
            ))
        })
        .collect()
}

/// Deletes finished rows older than `before`.
pub async fn prune(store: &Store, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM notifications WHERE state <> 'pending' AND finished_at < $1")
            .bind(at(before))
            .execute(store.pool())
            .await?
            .rows_affected(),
    )
}

/// Pending rows per channel.
pub async fn depth(store: &Store) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT channel, COUNT(*) AS n FROM notifications WHERE state = 'pending' \
         GROUP BY channel",
    )
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let n: i64 = r.try_get("n")?;
            Ok((r.try_get("channel")?, u64::try_from(n).unwrap_or(0)))
        })
        .collect()
}

/// How many of `ids` are finished: delivered, or with nothing to send after all.
pub async fn finished(store: &Store, ids: &[Uuid]) -> Result<usize, sqlx::Error> {
    let mut done = 0;
    // One query per id: callers ask about a handful (one per channel).
    for id in ids {
        let row = sqlx::query(
            "SELECT 1 AS x FROM notifications WHERE id = $1 AND state IN ('delivered', 'skipped')",
        )
        .bind(id.to_string())
        .fetch_optional(store.pool())
        .await?;
        done += usize::from(row.is_some());
    }
    Ok(done)
}
