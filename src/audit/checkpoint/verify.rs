//! `audit verify`'s checkpoint part: every checkpoint against the trail and the key rules.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::{Checkpoint, CheckpointKey, KEYED, decode};
use crate::audit::{Audit, AuditError, GENESIS};

/// Checkpoint problems listed per verification: a wrong key would otherwise list them all.
const MAX_PROBLEMS: usize = 100;
/// Checkpoints read per query while verifying.
const PAGE: i64 = 1000;

/// What `audit verify` checks beyond the hash chain.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Keys keyed checkpoints may be MACed with (current first). With any, every checkpoint
    /// from the first keyed one on must be keyed, and so must the newest.
    pub keys: Vec<CheckpointKey>,
    /// Fails when the newest checkpoint is older than this (or there is none).
    pub max_checkpoint_age: Option<Duration>,
    /// A checkpoint file kept outside the store: each of its checkpoints must be in the store.
    pub checkpoint_file: Option<PathBuf>,
    /// "Now" for the age check; default: the clock.
    pub now: Option<DateTime<Utc>>,
}

/// One checkpoint inconsistency.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckpointProblem {
    /// The checkpoint concerned, if one is.
    pub index: Option<i64>,
    /// What is wrong, in words.
    pub what: String,
}

/// The checkpoint part of a verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointReport {
    /// Checkpoints checked in the store.
    pub checked: u64,
    /// The newest checkpoint in the store.
    pub newest: Option<Checkpoint>,
    /// Records newer than the newest checkpoint: the tail that no checkpoint covers yet.
    pub uncovered_records: i64,
    /// Lines of the checkpoint file checked against the store.
    pub anchored: u64,
    /// Every inconsistency, in order (at most 100, then a count of the rest).
    pub problems: Vec<CheckpointProblem>,
}

/// Walks checkpoints in index order and reports every inconsistency.
#[derive(Debug)]
struct CheckpointVerifier<'k> {
    keys: &'k [CheckpointKey],
    prev: Option<Checkpoint>,
    seen_keyed: bool,
    unverifiable: u64,
    omitted: usize,
    /// index → mac of every store checkpoint, when a checkpoint file is to be compared.
    macs: Option<HashMap<i64, String>>,
    report: CheckpointReport,
}

impl<'k> CheckpointVerifier<'k> {
    /// A verifier; `keep_macs` when a checkpoint file will be compared afterwards.
    fn new(keys: &'k [CheckpointKey], keep_macs: bool) -> Self {
        Self {
            keys,
            prev: None,
            seen_keyed: false,
            unverifiable: 0,
            omitted: 0,
            macs: keep_macs.then(HashMap::new),
            report: CheckpointReport::default(),
        }
    }

    fn problem(&mut self, index: Option<i64>, what: String) {
        if self.report.problems.len() < MAX_PROBLEMS {
            self.report.problems.push(CheckpointProblem { index, what });
        } else {
            self.omitted += 1;
        }
    }

    /// MAC and key rules shared by store and file checkpoints.
    fn check_mac(&mut self, cp: &Checkpoint, place: &str) {
        if cp.alg == KEYED && self.keys.is_empty() {
            self.unverifiable += 1;
        } else if let Err(why) = cp.check(self.keys) {
            self.problem(Some(cp.index), format!("{place}{why}"));
        }
    }

    /// Checks the next store checkpoint; `record_hash` is the stored hash of the record at
    /// its `head_seq`, if that record exists.
    fn push(&mut self, cp: Checkpoint, record_hash: Option<&str>) {
        let at = Some(cp.index);
        self.report.checked += 1;
        self.check_mac(&cp, "");
        if !self.keys.is_empty() {
            if cp.alg == KEYED {
                self.seen_keyed = true;
            } else if self.seen_keyed {
                self.problem(
                    at,
                    "it is unkeyed but follows keyed checkpoints: it was not written by sever"
                        .into(),
                );
            }
        }
        match &self.prev {
            None if cp.index != 1 => self.problem(
                at,
                format!("checkpoints 1..{} are missing (deleted)", cp.index - 1),
            ),
            None if cp.prev_mac != GENESIS => {
                self.problem(at, "the first checkpoint does not start the chain".into())
            }
            None => {}
            Some(prev) => {
                let (prev_index, prev_mac, prev_seq) =
                    (prev.index, prev.mac.clone(), prev.head_seq);
                if cp.index != prev_index + 1 {
                    self.problem(
                        at,
                        format!(
                            "checkpoints {}..{} are missing (deleted)",
                            prev_index + 1,
                            cp.index - 1
                        ),
                    );
                } else if cp.prev_mac != prev_mac {
                    self.problem(
                        at,
                        format!(
                            "it does not chain to checkpoint {prev_index}: one of them was replaced"
                        ),
                    );
                }
                if cp.head_seq < prev_seq {
                    self.problem(
                        at,
                        format!(
                            "it covers records up to seq {} but checkpoint {prev_index} covered up \
                             to {prev_seq}: records were removed and the trail was written anew",
                            cp.head_seq
                        ),
                    );
                }
            }
        }
        let seq = cp.head_seq;
        match record_hash {
            _ if seq == 0 => {
                if cp.head_hash != GENESIS {
                    self.problem(
                        at,
                        "it covers an empty trail with a non-genesis hash".into(),
                    );
                }
            }
            None => self.problem(
                at,
                format!(
                    "record seq {seq}, which it covers, is missing: the tail of the trail was \
                     truncated"
                ),
            ),
            Some(hash) if hash != cp.head_hash => self.problem(
                at,
                format!(
                    "record seq {seq} no longer has the hash this checkpoint recorded: the trail \
                     was truncated and written anew, or the record was edited"
                ),
            ),
            Some(_) => {}
        }
        if let Some(macs) = &mut self.macs {
            macs.insert(cp.index, cp.mac.clone());
        }
        self.prev = Some(cp);
    }

    /// Checks one line of the checkpoint file against the store's checkpoints; returns the
    /// checkpoint when it is absent from the store (so its record can be looked up).
    fn push_anchor(&mut self, line_no: usize, line: &str) -> Option<Checkpoint> {
        let cp: Checkpoint = match serde_json::from_str(line) {
            Ok(cp) => cp,
            Err(_) => {
                self.problem(
                    None,
                    format!("checkpoint file line {line_no} is not a checkpoint"),
                );
                return None;
            }
        };
        self.report.anchored += 1;
        self.check_mac(&cp, "in the checkpoint file: ");
        let stored = self.macs.as_ref().and_then(|m| m.get(&cp.index)).cloned();
        match stored {
            None => {
                self.problem(
                    Some(cp.index),
                    format!(
                        "it is in the checkpoint file (line {line_no}) but not in the store: the \
                         store was rolled back or its checkpoints deleted"
                    ),
                );
                Some(cp)
            }
            Some(mac) if mac != cp.mac => {
                self.problem(
                    Some(cp.index),
                    format!(
                        "the store's copy differs from the checkpoint file (line {line_no}): it \
                         was replaced in the store"
                    ),
                );
                None
            }
            Some(_) => None,
        }
    }

    /// Checks the record an anchored checkpoint missing from the store covered.
    fn anchored_record(&mut self, cp: &Checkpoint, record_hash: Option<&str>) {
        if cp.head_seq == 0 {
            return;
        }
        let seq = cp.head_seq;
        match record_hash {
            None => self.problem(
                Some(cp.index),
                format!("record seq {seq}, which the checkpoint file says existed, is missing"),
            ),
            Some(hash) if hash != cp.head_hash => self.problem(
                Some(cp.index),
                format!(
                    "record seq {seq} no longer has the hash the checkpoint file recorded: the \
                     trail was written anew"
                ),
            ),
            Some(_) => {}
        }
    }

    /// The result, given the trail's newest `seq` and the options' age limit.
    fn finish(
        mut self,
        head_seq: i64,
        max_age: Option<Duration>,
        now: DateTime<Utc>,
    ) -> CheckpointReport {
        if self.unverifiable > 0 {
            let n = self.unverifiable;
            self.problem(
                None,
                format!(
                    "{n} checkpoint(s) are keyed, but no audit.checkpoint_key is configured to \
                     check them"
                ),
            );
        }
        let newest = self.prev.take();
        if let Some(newest) = &newest {
            if !self.keys.is_empty() && newest.alg != KEYED {
                self.problem(
                    Some(newest.index),
                    "the newest checkpoint is unkeyed though audit.checkpoint_key is configured: \
                     newer ones may have been removed"
                        .into(),
                );
            }
            self.report.uncovered_records = (head_seq - newest.head_seq).max(0);
        } else {
            self.report.uncovered_records = head_seq;
        }
        if let Some(max) = max_age {
            let limit = humantime::format_duration(max);
            match &newest {
                None => self.problem(
                    None,
                    format!(
                        "there is no checkpoint, and --max-checkpoint-age {limit} requires one: \
                         none was written, or all were deleted"
                    ),
                ),
                Some(cp) => match DateTime::parse_from_rfc3339(&cp.at) {
                    Err(_) => {
                        self.problem(Some(cp.index), "its time is not RFC 3339".into());
                    }
                    Ok(at) => {
                        let age = (now - at.with_timezone(&Utc)).to_std().unwrap_or_default();
                        if age > max {
                            let age =
                                humantime::format_duration(Duration::from_secs(age.as_secs()));
                            self.problem(
                                Some(cp.index),
                                format!(
                                    "the newest checkpoint is {age} old (written {}), more than \
                                     --max-checkpoint-age {limit}: checkpoints stopped being \
                                     written, or the newest were deleted",
                                    cp.at
                                ),
                            );
                        }
                    }
                },
            }
        }
        if self.omitted > 0 {
            let n = self.omitted;
            self.report.problems.push(CheckpointProblem {
                index: None,
                what: format!("… and {n} more checkpoint problem(s)"),
            });
        }
        self.report.newest = newest;
        self.report
    }
}

impl Audit {
    /// Checks every checkpoint in the store (and the checkpoint file, if given) against the
    /// trail whose newest record is `head_seq`.
    pub(in crate::audit) async fn verify_checkpoints(
        &self,
        options: &VerifyOptions,
        head_seq: i64,
    ) -> Result<CheckpointReport, AuditError> {
        let mut verifier =
            CheckpointVerifier::new(&options.keys, options.checkpoint_file.is_some());
        let mut after = 0i64;
        loop {
            // Each checkpoint with the hash of the record it covers, if that still exists.
            let rows = sqlx::query(
                "SELECT c.idx, c.at, c.head_seq, c.head_hash, c.prev_mac, c.alg, c.mac, \
                 r.hash AS record_hash \
                 FROM audit_checkpoints c LEFT JOIN audit_records r ON r.seq = c.head_seq \
                 WHERE c.idx > $1 ORDER BY c.idx LIMIT $2",
            )
            .bind(after)
            .bind(PAGE)
            .fetch_all(self.store.pool())
            .await?;
            for row in &rows {
                let cp = decode(row)?;
                let record_hash: Option<String> = row.try_get("record_hash")?;
                after = cp.index;
                verifier.push(cp, record_hash.as_deref());
            }
            if (rows.len() as i64) < PAGE {
                break;
            }
        }
        if let Some(path) = &options.checkpoint_file {
            let file_error = |source| AuditError::CheckpointFile {
                path: path.display().to_string(),
                source,
            };
            let file = std::fs::File::open(path).map_err(file_error)?;
            for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.map_err(file_error)?;
                if line.trim().is_empty() {
                    continue;
                }
                if let Some(missing) = verifier.push_anchor(i + 1, &line) {
                    let hash: Option<String> =
                        sqlx::query_scalar("SELECT hash FROM audit_records WHERE seq = $1")
                            .bind(missing.head_seq)
                            .fetch_optional(self.store.pool())
                            .await?;
                    verifier.anchored_record(&missing, hash.as_deref());
                }
            }
        }
        let now = options.now.unwrap_or_else(Utc::now);
        Ok(verifier.finish(head_seq, options.max_checkpoint_age, now))
    }
}
