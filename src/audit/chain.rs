//! The hash chain: each record's hash covers its own canonical form and the previous hash.

use serde::Serialize;
use sha2::{Digest, Sha256};

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::checkpoint::{CheckpointReport, VerifyOptions};
use super::{Audit, AuditError, AuditRecord, Entry, read};
use crate::store::{Backend, keep_prepared, rows_per_statement, values_list};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 over the previous hash and the record's canonical form, as hex.
///
/// The canonical form is a JSON array of the stored columns in a fixed order; `detail` is
/// hashed exactly as stored (it is written as compact, key-sorted JSON), so verification
/// never depends on re-serialising anything.
pub fn record_hash(prev_hash: &str, record: &AuditRecord) -> String {
    let canonical = serde_json::to_string(&(
        record.seq,
        &record.id,
        &record.at,
        &record.kind,
        &record.actor,
        &record.action_id,
        &record.detail,
    ))
    .expect("a tuple of strings and integers always serialises");
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

/// One inconsistency found by [`Verifier`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Problem {
    /// The record at which the chain stops checking out.
    pub seq: i64,
    /// That record's id (empty when the record cannot be read).
    pub id: String,
    /// What is wrong, in words.
    pub what: String,
}

/// Walks records in `seq` order and reports every place the chain breaks.
#[derive(Debug)]
pub struct Verifier {
    expected_seq: i64,
    /// `None` after a record that could not be read: the next link cannot be checked.
    prev_hash: Option<String>,
    checked: u64,
    problems: Vec<Problem>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            expected_seq: 1,
            prev_hash: Some(GENESIS.to_owned()),
            checked: 0,
            problems: Vec::new(),
        }
    }
}

impl Verifier {
    /// Checks the next record.
    pub fn push(&mut self, record: &AuditRecord) {
        self.checked += 1;
        let gap = self.gap_before(record.seq);
        let broken_link = self
            .prev_hash
            .as_ref()
            .is_some_and(|prev| *prev != record.prev_hash);
        let mut problem = |what: String| {
            self.problems.push(Problem {
                seq: record.seq,
                id: record.id.clone(),
                what,
            })
        };
        if let Some(gap) = gap {
            problem(gap);
        }
        if broken_link {
            problem(
                "prev_hash does not match the previous record: a record before it was deleted, \
                 reordered or altered"
                    .into(),
            );
        }
        if record_hash(&record.prev_hash, record) != record.hash {
            problem("hash does not match the record's content: the record was edited".into());
        }
        self.expected_seq = record.seq + 1;
        self.prev_hash = Some(record.hash.clone());
    }

    /// What is wrong with the sequence number `seq` coming next, if anything.
    fn gap_before(&self, seq: i64) -> Option<String> {
        if seq > self.expected_seq {
            Some(format!(
                "records {}..{} are missing (deleted)",
                self.expected_seq,
                seq - 1
            ))
        } else if seq < self.expected_seq {
            Some(format!(
                "sequence number out of order (expected {})",
                self.expected_seq
            ))
        } else {
            None
        }
    }

    /// Records that the record at `seq` is there but cannot be read as the schema says.
    pub fn unreadable(&mut self, seq: i64, what: String) {
        self.checked += 1;
        if let Some(gap) = self.gap_before(seq) {
            self.problems.push(Problem {
                seq,
                id: String::new(),
                what: gap,
            });
        }
        self.problems.push(Problem {
            seq,
            id: String::new(),
            what,
        });
        self.expected_seq = seq + 1;
        self.prev_hash = None;
    }

    /// Records that no record after `after` can be read (the table is missing or altered).
    pub fn table_unreadable(&mut self, after: i64, what: String) {
        self.problems.push(Problem {
            seq: after + 1,
            id: String::new(),
            what: format!(
                "the audit_records table cannot be read from here on: it was dropped or \
                 altered ({what})"
            ),
        });
    }

    /// The result: how many records were checked and what was wrong.
    pub fn finish(self) -> VerifyReport {
        VerifyReport {
            ok: self.problems.is_empty(),
            records: self.checked,
            last_hash: self.prev_hash.unwrap_or_default(),
            problems: self.problems,
            checkpoints: CheckpointReport::default(),
        }
    }
}

/// Result of verifying the whole chain.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VerifyReport {
    /// True when no problem was found.
    pub ok: bool,
    /// Records checked.
    pub records: u64,
    /// Hash of the last record.
    pub last_hash: String,
    /// Every inconsistency, in order.
    pub problems: Vec<Problem>,
    /// What the checkpoints say (filled in by [`super::Audit::verify_with`]).
    pub checkpoints: CheckpointReport,
}

impl Audit {
    /// Checks the whole chain and the checkpoints (without a key or age limit).
    pub async fn verify(&self) -> Result<VerifyReport, AuditError> {
        self.verify_with(&VerifyOptions::default()).await
    }

    /// Checks the whole chain and names every record where it breaks, then every checkpoint
    /// against it (see [`VerifyOptions`]). Content the schema does not allow (a cell of the
    /// wrong type, a missing table) is a problem at its sequence number, never an `Err`:
    /// `Err` means the store could not be reached or read at all.
    pub async fn verify_with(&self, options: &VerifyOptions) -> Result<VerifyReport, AuditError> {
        const RECORDS: read::Table = read::Table {
            page: concat!(
                "SELECT ",
                columns!(),
                " FROM audit_records WHERE seq > $1 ORDER BY seq LIMIT $2"
            ),
            keys: "SELECT seq FROM audit_records WHERE seq > $1 ORDER BY seq LIMIT $2",
            one: concat!("SELECT ", columns!(), " FROM audit_records WHERE seq = $1"),
            key: "seq",
        };
        let mut verifier = Verifier::default();
        let mut head_seq = 0;
        let fault = read::scan(
            self.store.pool(),
            &RECORDS,
            decode_leniently,
            |seq, record| {
                head_seq = seq;
                match record {
                    Ok(record) => verifier.push(&record),
                    Err(what) => verifier.unreadable(seq, what),
                }
                Ok(())
            },
        )
        .await?;
        if let Some(fault) = fault {
            verifier.table_unreadable(fault.after, fault.what);
        }
        let mut report = verifier.finish();
        report.checkpoints = self.verify_checkpoints(options, head_seq).await?;
        report.ok &= report.checkpoints.problems.is_empty();
        Ok(report)
    }
}

/// A stored record, or in words why it does not have the schema's types.
fn decode_leniently(row: &AnyRow) -> Result<AuditRecord, String> {
    Ok(AuditRecord {
        seq: read::column(row, "seq")?,
        id: read::column(row, "id")?,
        at: read::column(row, "at")?,
        kind: read::column(row, "kind")?,
        actor: read::column(row, "actor")?,
        action_id: read::column(row, "action_id")?,
        detail: read::column(row, "detail")?,
        prev_hash: read::column(row, "prev_hash")?,
        hash: read::column(row, "hash")?,
    })
}

/// The chain head in `tx`: the last record's seq and hash, or the genesis.
pub(super) async fn read_head(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
) -> Result<(i64, String), sqlx::Error> {
    let head = sqlx::query("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    Ok(match head {
        Some(row) => (row.try_get("seq")?, row.try_get("hash")?),
        None => (0, GENESIS.to_owned()),
    })
}

/// `entries` as records chained onto `head`, all written `at`.
pub(super) fn chain_records(entries: &[Entry], head: (i64, String), at: &str) -> Vec<AuditRecord> {
    let (mut seq, mut prev_hash) = head;
    let mut records = Vec::with_capacity(entries.len());
    for entry in entries {
        seq += 1;
        let mut record = AuditRecord {
            seq,
            id: Uuid::now_v7().to_string(),
            at: at.to_owned(),
            kind: entry.kind.as_str().to_owned(),
            actor: entry.actor.clone(),
            action_id: entry.action_id.map(|id| id.to_string()),
            // serde_json's map is key-sorted, so this text is canonical.
            detail: entry.detail.to_string(),
            prev_hash,
            hash: String::new(),
        };
        record.hash = record_hash(&record.prev_hash, &record);
        prev_hash = record.hash.clone();
        records.push(record);
    }
    records
}

/// Inserts `records`, several per statement (a group of accepted events appends hundreds).
/// With `head` (seq, hash), the first statement inserts only if that record is still the
/// last one: returns 0 when it is not. Otherwise returns how many were inserted.
pub(super) async fn insert_records(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    records: &[AuditRecord],
    mut head: Option<(i64, &str)>,
) -> Result<u64, sqlx::Error> {
    let mut inserted = 0;
    for chunk in records.chunks(rows_per_statement(9)) {
        let values = values_list(backend, chunk.len(), 9);
        let sql = match (head, backend) {
            (None, _) => format!(
                concat!("INSERT INTO audit_records (", columns!(), ") VALUES {}"),
                values
            ),
            (Some(_), Backend::Sqlite) => format!(
                concat!(
                    "INSERT INTO audit_records (",
                    columns!(),
                    ") SELECT * FROM (VALUES {}) AS v \
                     WHERE NOT EXISTS (SELECT 1 FROM audit_records WHERE seq > ?) \
                     AND EXISTS (SELECT 1 FROM audit_records WHERE seq = ? AND hash = ?)"
                ),
                values
            ),
            (Some(_), Backend::Postgres) => {
                let n = chunk.len() * 9;
                format!(
                    concat!(
                        "INSERT INTO audit_records (",
                        columns!(),
                        ") SELECT * FROM (VALUES {}) AS v \
                         WHERE NOT EXISTS (SELECT 1 FROM audit_records WHERE seq > ${}) \
                         AND EXISTS (SELECT 1 FROM audit_records WHERE seq = ${} AND hash = ${})"
                    ),
                    values,
                    n + 1,
                    n + 2,
                    n + 3
                )
            }
        };
        let mut insert =
            sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(keep_prepared(chunk.len()));
        for r in chunk {
            insert = insert
                .bind(r.seq)
                .bind(&r.id)
                .bind(&r.at)
                .bind(&r.kind)
                .bind(&r.actor)
                .bind(&r.action_id)
                .bind(&r.detail)
                .bind(&r.prev_hash)
                .bind(&r.hash);
        }
        if let Some((seq, hash)) = head.take() {
            insert = insert.bind(seq).bind(seq).bind(hash.to_owned());
            let n = insert.execute(&mut **tx).await?.rows_affected();
            if n == 0 {
                return Ok(0);
            }
            inserted += n;
        } else {
            inserted += insert.execute(&mut **tx).await?.rows_affected();
        }
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    seq,
                    id: format!("id{seq}"),
                    at: "2026-01-01T00:00:00.000000Z".into(),
                    kind: "test".into(),
                    actor: "me".into(),
                    action_id: None,
                    detail: format!("{{\"n\":{seq}}}"),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                r.hash = record_hash(&prev, &r);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn verify(records: &[AuditRecord]) -> VerifyReport {
        let mut v = Verifier::default();
        records.iter().for_each(|r| v.push(r));
        v.finish()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let report = verify(&chain(5));
        assert!(report.ok, "{report:?}");
        assert_eq!(report.records, 5);
    }

    #[test]
    fn an_edit_is_named() {
        let mut records = chain(5);
        records[2].detail = "{\"n\":99}".into();
        let report = verify(&records);
        assert!(!report.ok);
        assert_eq!(report.problems[0].seq, 3);
        assert!(report.problems[0].what.contains("edited"));
    }

    #[test]
    fn a_deletion_is_named() {
        let mut records = chain(5);
        records.remove(1);
        let report = verify(&records);
        assert_eq!(report.problems[0].seq, 3);
        assert!(report.problems[0].what.contains("missing"));
    }

    #[test]
    fn a_reorder_is_detected() {
        let mut records = chain(5);
        records.swap(1, 2);
        let report = verify(&records);
        assert!(!report.ok);
        assert_eq!(report.problems[0].seq, 3);
    }

    #[test]
    fn a_recomputed_edit_breaks_the_next_link() {
        let mut records = chain(4);
        records[1].detail = "{\"n\":42}".into();
        let prev = records[0].hash.clone();
        records[1].hash = record_hash(&prev, &records[1]);
        let report = verify(&records);
        assert_eq!(report.problems[0].seq, 3);
        assert!(report.problems[0].what.contains("prev_hash"));
    }
}
