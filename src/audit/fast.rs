//! The one-round-trip commit on a PostgreSQL store: a [`Transaction`] whose rows are known
//! before it runs hands them over as a [`Prepared`], and they are written by one call of
//! the `sever_commit` function (migration 0014), with the records chained onto the head
//! this process last committed. The function checks under the chain lock that what the rows
//! assume still holds, and writes nothing when it does not; the transaction then runs as
//! several statements, as it does on SQLite. Each statement sent to a store on another host
//! is a round trip; a transaction of ten is ten.
//!
//! [`Transaction`]: super::Transaction

use serde_json::{Map, Value, json};

use super::chain::chain_records;
use super::{AuditRecord, Entry};
use crate::store::Store;

/// What a transaction would write, computed before it runs, for [`commit`].
#[derive(Debug)]
pub struct Prepared<T> {
    /// The rows, under the keys `sever_commit` reads (`claims`, `actions`, `steps`, `step`,
    /// `finished`): each a row object, or a list of them, with one field per column.
    pub rows: Map<String, Value>,
    /// The records to append, as the transaction would decide them.
    pub entries: Vec<Entry>,
    /// What the transaction hands back once committed.
    pub output: T,
}

/// What [`commit`] did.
#[derive(Debug)]
pub(super) enum Outcome<T> {
    /// Written, with the new chain head.
    Committed(T, (i64, String)),
    /// Nothing written: one of the rows' assumptions did not hold (the function's answer:
    /// `head`, `taken`, `others` or `lost`); run the transaction itself.
    Refused(String),
}

/// Writes `prepared` with its records chained onto `head`, in one statement.
pub(super) async fn commit<T>(
    store: &Store,
    prepared: Prepared<T>,
    head: &(i64, String),
    at: &str,
) -> Result<Outcome<T>, sqlx::Error> {
    let records = chain_records(&prepared.entries, head.clone(), at);
    let mut doc = prepared.rows;
    doc.insert("head_seq".into(), json!(head.0));
    doc.insert("head_hash".into(), json!(head.1));
    doc.insert(
        "records".into(),
        Value::Array(records.iter().map(record_row).collect()),
    );
    let answer: String = sqlx::query_scalar("SELECT sever_commit($1)")
        .bind(Value::Object(doc).to_string())
        .fetch_one(store.pool())
        .await?;
    if answer != "ok" {
        return Ok(Outcome::Refused(answer));
    }
    let new_head = records
        .last()
        .map_or_else(|| head.clone(), |r| (r.seq, r.hash.clone()));
    Ok(Outcome::Committed(prepared.output, new_head))
}

/// A record as `sever_commit` inserts it: every column as stored (`detail` as its text).
fn record_row(r: &AuditRecord) -> Value {
    json!({
        "seq": r.seq,
        "id": r.id,
        "at": r.at,
        "kind": r.kind,
        "actor": r.actor,
        "action_id": r.action_id,
        "detail": r.detail,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
    })
}
