//! The audit trail: one record per action, hash-chained, exportable as JSON lines.
//!
//! May call `store` and `config` only; the records it keeps are built by those who act.

/// The stored columns, in one place for every statement (sqlx wants static SQL text);
/// defined before the submodules, which use it too.
macro_rules! columns {
    () => {
        "seq, id, at, kind, actor, action_id, detail, prev_hash, hash"
    };
}

mod chain;
mod checkpoint;
mod checkpoint_file;
mod fast;
mod read;

use std::io::Write;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::store::{Backend, Store, StoreError, connection_lost, timestamp};

pub use chain::{GENESIS, Problem, VerifyReport, record_hash};
use chain::{chain_records, insert_records, read_head};
pub use checkpoint::{
    ChainHealth, Checkpoint, CheckpointKey, CheckpointProblem, CheckpointReport, VerifyOptions,
    Writer, Written, checkpoint_writer,
};
pub use checkpoint_file::CheckpointFileHealth;
pub use fast::Prepared;

/// Failures of the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing an export failed.
    #[error("cannot write the export: {0}")]
    Io(#[from] std::io::Error),
    /// The checkpoint file could not be read or appended to.
    #[error("checkpoint file {path}: {source}")]
    CheckpointFile {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for AuditError {
    fn from(e: sqlx::Error) -> Self {
        AuditError::Store(StoreError::Query(e))
    }
}

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A signed event was verified and accepted.
    EventAccepted,
    /// A verified event that needs no action (a non-final rotation step, a confirmation).
    EventAcknowledged,
    /// A verified event that is not about a mapped credential's rotation.
    EventIgnored,
    /// A verified event reporting a rotation that was already acted on.
    EventDuplicate,
    /// A request was refused (bad signature, bad input, bad token, …).
    RequestRejected,
    /// The plan an action is about to execute.
    ActionPlanned,
    /// A session was terminated.
    SessionTerminated,
    /// A session would have been terminated (dry run).
    SessionWouldTerminate,
    /// A session's running statement was cancelled; the session stays (mode `cancel`).
    SessionCancelled,
    /// A session's running statement would have been cancelled (dry run, mode `cancel`).
    SessionWouldCancel,
    /// A matching session was left alone (protected, superuser, sever's own, unreadable).
    SessionSkipped,
    /// Terminating a session failed.
    SessionFailed,
    /// A terminated session was still there after the verification timeout.
    SessionRemaining,
    /// A target failed and will be retried (recorded at its first failure).
    TargetRetrying,
    /// A whole target failed (unreachable, timed out, refused) and is no longer retried.
    TargetFailed,
    /// An action finished; its summary.
    ActionCompleted,
    /// A policy's firing on one target: what it saw, picked and ended (one record per
    /// target, not one per session spared).
    PolicyTarget,
    /// A policy paused itself after ending sessions in too many runs in a row.
    PolicyPaused,
    /// An operator resumed a paused policy.
    PolicyResumed,
    /// A scheduled action was called off before it acted.
    ActionCancelled,
    /// A scheduled action was announced: what, where, why and when.
    AnnouncementMade,
    /// An announced action was called off (or expired), and that was announced.
    AnnouncementCancelled,
    /// A notification's first delivery attempt failed; it is retried.
    NotificationFailed,
    /// A notification was delivered (after how many attempts).
    NotificationDelivered,
    /// A notification was given up: retried too long, or refused for good.
    NotificationGivenUp,
    /// Notifications were dropped: the channel's outbox was full (counts per event).
    NotificationDropped,
    /// An operator's verification of the trail finished (or failed): its outcome, so the
    /// check itself is on the record.
    AuditVerified,
}

impl Kind {
    /// The stable name stored in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EventAccepted => "event.accepted",
            Kind::EventAcknowledged => "event.acknowledged",
            Kind::EventIgnored => "event.ignored",
            Kind::EventDuplicate => "event.duplicate",
            Kind::RequestRejected => "request.rejected",
            Kind::ActionPlanned => "action.planned",
            Kind::SessionTerminated => "session.terminated",
            Kind::SessionWouldTerminate => "session.would_terminate",
            Kind::SessionCancelled => "session.cancelled",
            Kind::SessionWouldCancel => "session.would_cancel",
            Kind::SessionSkipped => "session.skipped",
            Kind::SessionFailed => "session.failed",
            Kind::SessionRemaining => "session.remaining",
            Kind::TargetRetrying => "target.retrying",
            Kind::TargetFailed => "target.failed",
            Kind::ActionCompleted => "action.completed",
            Kind::PolicyTarget => "policy.target",
            Kind::PolicyPaused => "policy.paused",
            Kind::PolicyResumed => "policy.resumed",
            Kind::ActionCancelled => "action.cancelled",
            Kind::AnnouncementMade => "announcement.made",
            Kind::AnnouncementCancelled => "announcement.cancelled",
            Kind::NotificationFailed => "notification.failed",
            Kind::NotificationDelivered => "notification.delivered",
            Kind::NotificationGivenUp => "notification.given_up",
            Kind::NotificationDropped => "notification.dropped",
            Kind::AuditVerified => "audit.verified",
        }
    }
}

/// A record to append.
#[derive(Debug, Clone)]
pub struct Entry {
    /// What it is about.
    pub kind: Kind,
    /// Who caused it: `webhook`, `operator:<name>`, `cli:<user>`, `anonymous`.
    pub actor: String,
    /// The action it belongs to, if any.
    pub action_id: Option<Uuid>,
    /// Details; never secrets.
    pub detail: Value,
}

impl Entry {
    /// A record about `kind` by `actor`.
    pub fn new(
        kind: Kind,
        actor: impl Into<String>,
        action_id: Option<Uuid>,
        detail: Value,
    ) -> Self {
        Self {
            kind,
            actor: actor.into(),
            action_id,
            detail,
        }
    }
}

/// What a [`Transaction`] decided.
#[derive(Debug)]
pub enum Decision<T> {
    /// Append these records and commit the whole transaction.
    Commit(Vec<Entry>, T),
    /// Undo the whole transaction; append nothing.
    Rollback(T),
}

/// Work done in the audit's transaction (see [`Audit::transact`]). It may run more than once
/// (a conflicting writer makes the transaction retry), so it must only touch the store
/// through `tx`.
#[async_trait::async_trait]
pub trait Transaction: Send + Sync {
    /// What the work hands back.
    type Output: Send;
    /// Does the work inside `tx` and decides what to append.
    async fn run(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<Decision<Self::Output>, sqlx::Error>;

    /// Whether committing this acknowledges something new (an event, a refusal, a probe).
    /// New work is refused once the store file is lost, so nothing is acknowledged that would
    /// not survive a restart; the progress of work accepted before (`false`) still commits
    /// into the open file, so that work finishes.
    fn is_new_work(&self) -> bool {
        true
    }

    /// The rows this work would write, when they can be known without reading the store
    /// (see [`fast`]): on PostgreSQL they are then written in one round trip, and [`run`]
    /// runs only if an assumption they rest on turns out false. `None`: always [`run`].
    ///
    /// [`run`]: Self::run
    fn prepared(&self) -> Option<Prepared<Self::Output>> {
        None
    }
}

/// Appends the records and nothing else.
struct AppendOnly(Vec<Entry>);

#[async_trait::async_trait]
impl Transaction for AppendOnly {
    type Output = ();
    async fn run(
        &self,
        _tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<Decision<()>, sqlx::Error> {
        Ok(Decision::Commit(self.0.clone(), ()))
    }
}

/// Touches the probe row and appends nothing.
struct Probe;

#[async_trait::async_trait]
impl Transaction for Probe {
    type Output = ();
    async fn run(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<Decision<()>, sqlx::Error> {
        sqlx::query(
            "INSERT INTO store_probe (id, at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        )
        .bind(timestamp(Utc::now()))
        .execute(&mut **tx)
        .await?;
        Ok(Decision::Commit(Vec::new(), ()))
    }
}

/// A record as stored; serialises (for export) with `detail` as a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// Unique id.
    pub id: String,
    /// When it was written (RFC 3339, UTC, microseconds).
    pub at: String,
    /// [`Kind`] name.
    pub kind: String,
    /// Who caused it.
    pub actor: String,
    /// The action it belongs to.
    pub action_id: Option<String>,
    /// Compact, key-sorted JSON, exactly as hashed; served as the JSON object it holds,
    /// whose fields depend on `kind` (a string only if someone edited the row into non-JSON).
    #[serde(serialize_with = "raw_json")]
    #[schema(value_type = Object, additional_properties = true)]
    pub detail: String,
    /// Hash of the previous record.
    pub prev_hash: String,
    /// Hash of this record.
    pub hash: String,
}

/// Which records to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this action's records.
    pub action_id: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only records by this actor, exactly (`operator:alice`).
    pub actor: Option<String>,
    /// Only records after this sequence number.
    pub after_seq: Option<i64>,
    /// Only records before this sequence number.
    pub before_seq: Option<i64>,
    /// At most this many (the newest for [`Audit::list`], the oldest for
    /// [`Audit::list_from`]), newest last.
    pub limit: Option<i64>,
}

/// The audit trail, on top of the store. A handle: its clones share the store and the lock.
#[derive(Debug, Clone)]
pub struct Audit {
    store: Store,
    // Appends from this process queue here instead of racing on the chain head. It holds
    // the chain head (seq, hash) this process last committed, so the next append need not
    // read it: the append is guarded and falls back to reading it if another process (a
    // replica, the CLI) wrote since, or the tail was deleted.
    append_lock: std::sync::Arc<Mutex<Option<(i64, String)>>>,
}

const PAGE: i64 = 1000;

impl Audit {
    /// The trail kept in `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            append_lock: std::sync::Arc::new(Mutex::new(None)),
        }
    }

    /// Appends one record.
    pub async fn append(&self, entry: Entry) -> Result<(), AuditError> {
        self.append_all(vec![entry]).await
    }

    /// Appends records in order, atomically: all of them or none.
    pub async fn append_all(&self, entries: Vec<Entry>) -> Result<(), AuditError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.transact(&AppendOnly(entries)).await
    }

    /// Runs `work` in one store transaction with the chain's write lock held, then appends
    /// the records it decided on in the same transaction: a state change and its audit
    /// records are committed together or not at all.
    pub async fn transact<W: Transaction>(&self, work: &W) -> Result<W::Output, AuditError> {
        // Timed as its caller waits for it: the chain lock, the attempts, the commit.
        let started = std::time::Instant::now();
        let result = self.transact_timed(work).await;
        crate::telemetry::store_write(started.elapsed(), result.is_ok());
        result
    }

    /// [`Self::transact`] without its timing.
    async fn transact_timed<W: Transaction>(&self, work: &W) -> Result<W::Output, AuditError> {
        let mut head = self.append_lock.lock().await;
        // Another process (the CLI beside the server, or a second replica) may take the same
        // sequence number; the primary key refuses the loser, which then retries on the new head.
        let mut attempt = 0;
        // Connections that had died while idle (the pool does not ping them first): each
        // failed attempt closed one, and after a store restart every idle one is dead.
        let mut dead = 0;
        loop {
            attempt += 1;
            match self.try_transact(work, &mut head).await {
                Ok(output) => return Ok(output),
                Err(AuditError::Store(StoreError::FileLost)) => {
                    return Err(StoreError::FileLost.into());
                }
                Err(AuditError::Store(StoreError::Query(e)))
                    if connection_lost(&e) && dead < crate::store::POSTGRES_POOL =>
                {
                    tracing::debug!(error = %e, "a store connection had died while idle; retrying");
                    dead += 1;
                    attempt -= 1;
                }
                Err(e) if attempt < 8 => {
                    tracing::debug!(error = %e, attempt, "audit append conflicted; retrying");
                    tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt of [`Self::transact`]; `known` is the chain head this process last
    /// committed, taken while the attempt runs and put back only once it committed.
    async fn try_transact<W: Transaction>(
        &self,
        work: &W,
        known: &mut Option<(i64, String)>,
    ) -> Result<W::Output, AuditError> {
        let mut cached = known.take();
        // Taken (not put back) until a commit succeeds: a failed call leaves the next
        // attempt to read the head.
        if let Some(head) = &cached
            && self.store.backend() == Backend::Postgres
            && let Some(prepared) = work.prepared()
        {
            match fast::commit(&self.store, prepared, head, &timestamp(Utc::now())).await? {
                fast::Outcome::Committed(output, head) => {
                    *known = Some(head);
                    return Ok(output);
                }
                fast::Outcome::Refused(why) => {
                    tracing::debug!(why, "the one-statement commit did not apply; running it");
                    if why == "head" {
                        cached = None;
                    }
                }
            }
        }
        let mut tx = begin_chain_tx(&self.store).await?;
        let (entries, output) = match work.run(&mut tx).await? {
            Decision::Commit(entries, output) => (entries, output),
            Decision::Rollback(output) => {
                tx.rollback().await?;
                *known = cached;
                return Ok(output);
            }
        };
        // Checked with the connection held and the write lock taken, just before the commit
        // that acknowledges: a store file lost earlier is noticed here at the latest.
        if let Err(e) = self.store.check_file() {
            if work.is_new_work() {
                return Err(e.into());
            }
            let actions: std::collections::BTreeSet<Uuid> =
                entries.iter().filter_map(|e| e.action_id).collect();
            for action_id in actions {
                tracing::error!(
                    %action_id,
                    "the store file is lost: this action, accepted before that was noticed, \
                     goes on in the open file, and its records will be missing after a restart"
                );
            }
        }
        if entries.is_empty() {
            tx.commit().await?;
            *known = cached;
            return Ok(output);
        }
        let backend = self.store.backend();
        let at = timestamp(Utc::now());
        let mut records = match &cached {
            Some(head) => chain_records(&entries, head.clone(), &at),
            None => chain_records(&entries, read_head(&mut tx).await?, &at),
        };
        // Chained onto the remembered head: inserted only if that is still the head, else
        // read the head (the chain lock is held, so it stays put) and chain again.
        if let Some((seq, hash)) = &cached
            && insert_records(&mut tx, backend, &records, Some((*seq, hash))).await? == 0
        {
            tracing::debug!("the audit chain moved since this process appended; re-reading");
            records = chain_records(&entries, read_head(&mut tx).await?, &at);
            insert_records(&mut tx, backend, &records, None).await?;
        } else if cached.is_none() {
            insert_records(&mut tx, backend, &records, None).await?;
        }
        tx.commit().await?;
        *known = records.last().map(|r| (r.seq, r.hash.clone()));
        Ok(output)
    }

    /// Proves the store takes writes the way appends do (for `/readyz`): the same lock,
    /// transaction (`BEGIN IMMEDIATE` on SQLite, the chain lock on PostgreSQL), store file
    /// check and commit, so it fails exactly when appends fail.
    pub async fn probe(&self) -> Result<(), AuditError> {
        self.transact(&Probe).await
    }

    /// The newest records matching `filter`, in chain order (oldest first).
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM audit_records \
             WHERE (CAST($1 AS TEXT) IS NULL OR action_id = $1) \
             AND (CAST($2 AS TEXT) IS NULL OR kind = $2) \
             AND (CAST($3 AS TEXT) IS NULL OR actor = $3) AND seq > $4 AND seq < $5 \
             ORDER BY seq DESC LIMIT $6"
        );
        let mut records = self.select(sql, filter).await?;
        records.reverse();
        Ok(records)
    }

    /// The oldest records matching `filter` (after its `after_seq`), in chain order: one
    /// page of a walk forwards, as an export takes it.
    pub async fn list_from(&self, filter: &ListFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM audit_records \
             WHERE (CAST($1 AS TEXT) IS NULL OR action_id = $1) \
             AND (CAST($2 AS TEXT) IS NULL OR kind = $2) \
             AND (CAST($3 AS TEXT) IS NULL OR actor = $3) AND seq > $4 AND seq < $5 \
             ORDER BY seq LIMIT $6"
        );
        self.select(sql, filter).await
    }

    /// Runs one of the filtered selects with `filter`'s values bound in order.
    async fn select(
        &self,
        sql: &'static str,
        filter: &ListFilter,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let rows = sqlx::query(sql)
            .bind(&filter.action_id)
            .bind(&filter.kind)
            .bind(&filter.actor)
            .bind(filter.after_seq.unwrap_or(0))
            .bind(filter.before_seq.unwrap_or(i64::MAX))
            .bind(filter.limit.unwrap_or(i64::MAX))
            .fetch_all(self.store.pool())
            .await?;
        Ok(rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?)
    }

    /// Every record in chain order, page by page, to `visit`.
    async fn scan(
        &self,
        mut visit: impl FnMut(AuditRecord) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM audit_records WHERE seq > $1 ORDER BY seq LIMIT $2"
            ))
            .bind(after)
            .bind(PAGE)
            .fetch_all(self.store.pool())
            .await?;
            let n = rows.len();
            for row in &rows {
                let record = decode(row)?;
                after = record.seq;
                visit(record)?;
            }
            if (n as i64) < PAGE {
                return Ok(());
            }
        }
    }

    /// Writes every record as one JSON line; returns how many.
    pub async fn export_jsonl(&self, out: &mut impl Write) -> Result<u64, AuditError> {
        let mut n = 0;
        self.scan(|record| {
            serde_json::to_writer(&mut *out, &record).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            n += 1;
            Ok(())
        })
        .await?;
        out.flush()?;
        Ok(n)
    }
}

/// Emits stored JSON text as JSON, not as a string, without re-parsing it into a map.
fn raw_json<S: serde::Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    match serde_json::value::RawValue::from_string(text.to_owned()) {
        Ok(raw) => raw.serialize(serializer),
        // Not JSON (only possible if someone edited the row): export it as a string.
        Err(_) => serializer.serialize_str(text),
    }
}

fn decode(row: &AnyRow) -> Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        actor: row.try_get("actor")?,
        action_id: row.try_get("action_id")?,
        detail: row.try_get("detail")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Opens a transaction holding the chain's write lock, which every append and checkpoint
/// takes: SQLite's write lock (taken before the head is read, so a concurrent writer waits
/// instead of failing), or PostgreSQL advisory lock 7262837 (serialising replicas).
async fn begin_chain_tx(
    store: &Store,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
    let mut tx = store.begin_write().await?;
    if store.backend() == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(7262837)")
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

#[cfg(test)]
mod tests;
