//! `audit verify`'s checkpoint part: every checkpoint against the trail and the key rules.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::AnyRow;

use super::{Checkpoint, CheckpointKey, KEYED, UNKEYED, decode};
use crate::audit::read::{self, Table, column, is_content_error};
use crate::audit::{Audit, AuditError, GENESIS};
use crate::config::UnkeyedPin;

/// Checkpoint problems listed per verification: a wrong key would otherwise list them all.
const MAX_PROBLEMS: usize = 100;

/// What `audit verify` checks beyond the hash chain.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Keys keyed checkpoints may be MACed with (current first). With any, every checkpoint
    /// must be keyed, except unkeyed ones up to `pin`.
    pub keys: Vec<CheckpointKey>,
    /// `audit.unkeyed_checkpoints_through`: the last unkeyed checkpoint from before the key.
    pub pin: Option<UnkeyedPin>,
    /// Fails when the newest checkpoint is older than this (or there is none).
    pub max_checkpoint_age: Option<Duration>,
    /// A checkpoint file kept outside the store: each of its checkpoints must be in the store.
    pub checkpoint_file: Option<PathBuf>,
    /// "Now" for the age check; default: the clock.
    pub now: Option<DateTime<Utc>>,
}

/// One checkpoint inconsistency.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CheckpointProblem {
    /// The checkpoint concerned, if one is.
    pub index: Option<i64>,
    /// What is wrong, in words.
    pub what: String,
}

/// The checkpoint part of a verification.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
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
    /// With a key and unkeyed checkpoints nothing pins: the value of
    /// `audit.unkeyed_checkpoints_through` that would accept them, if they are sever's own
    /// from before the key (the newest unkeyed one the first keyed one chains to, or the
    /// newest of all when none is keyed yet). Only the operator can judge that.
    pub suggested_pin: Option<UnkeyedPin>,
}

/// What came before the checkpoint being checked.
#[derive(Debug)]
enum Prev {
    /// Nothing: it should be checkpoint 1.
    Start,
    /// A checkpoint that could be read.
    Known(Checkpoint),
    /// A row at this index that could not be read: its link cannot be checked.
    Unreadable(i64),
}

/// Walks checkpoints in index order and reports every inconsistency.
#[derive(Debug)]
struct CheckpointVerifier<'k> {
    keys: &'k [CheckpointKey],
    pin: Option<&'k UnkeyedPin>,
    prev: Prev,
    newest: Option<Checkpoint>,
    unverifiable: u64,
    omitted: usize,
    pin_seen: bool,
    /// An unkeyed checkpoint failed the pin rules (so a suggestion may help).
    unpinned: bool,
    seen_keyed: bool,
    newest_unkeyed: Option<Checkpoint>,
    /// The unkeyed checkpoint the first keyed one chains to.
    keyed_from: Option<Checkpoint>,
    /// index → mac of every store checkpoint, when a checkpoint file is to be compared.
    macs: Option<HashMap<i64, String>>,
    report: CheckpointReport,
}

impl<'k> CheckpointVerifier<'k> {
    /// A verifier; `keep_macs` when a checkpoint file will be compared afterwards.
    fn new(options: &'k VerifyOptions) -> Self {
        Self {
            keys: &options.keys,
            pin: options.pin.as_ref(),
            prev: Prev::Start,
            newest: None,
            unverifiable: 0,
            omitted: 0,
            pin_seen: false,
            unpinned: false,
            seen_keyed: false,
            newest_unkeyed: None,
            keyed_from: None,
            macs: options.checkpoint_file.is_some().then(HashMap::new),
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

    /// MAC rules for checkpoint file lines.
    fn check_mac(&mut self, cp: &Checkpoint, place: &str) {
        if cp.alg == KEYED && self.keys.is_empty() {
            self.unverifiable += 1;
        } else if let Err(why) = cp.check(self.keys) {
            self.problem(Some(cp.index), format!("{place}{why}"));
        }
    }

    /// MAC, key and pin rules for store checkpoints.
    fn check_trust(&mut self, cp: &Checkpoint) {
        if cp.alg == KEYED && self.keys.is_empty() {
            self.unverifiable += 1;
            return;
        }
        if let Err(why) = cp.trusted(self.keys, self.pin) {
            self.unpinned |= cp.alg == UNKEYED && cp.check(self.keys).is_ok();
            self.problem(Some(cp.index), why);
        }
        if self.pin.is_some_and(|pin| pin.index == cp.index) {
            self.pin_seen = true;
        }
        if cp.alg == KEYED {
            if !self.seen_keyed
                && let Prev::Known(prev) = &self.prev
                && prev.alg == UNKEYED
                && prev.mac == cp.prev_mac
            {
                self.keyed_from = Some(prev.clone());
            }
            self.seen_keyed = true;
        } else {
            self.newest_unkeyed = Some(cp.clone());
        }
    }

    /// Names the checkpoints missing between the previous one and `index`, if any.
    fn gap_before(&mut self, index: i64) -> bool {
        let expected = match &self.prev {
            Prev::Start => 1,
            Prev::Known(prev) => prev.index + 1,
            Prev::Unreadable(prev) => prev + 1,
        };
        if index != expected {
            self.problem(
                Some(index),
                format!(
                    "checkpoints {expected}..{} are missing (deleted)",
                    index - 1
                ),
            );
        }
        index != expected
    }

    /// Checks the next store checkpoint; `record_hash` is the stored hash of the record at
    /// its `head_seq`, if that record exists.
    fn push(&mut self, cp: Checkpoint, record_hash: Option<&str>) {
        let at = Some(cp.index);
        self.report.checked += 1;
        self.check_trust(&cp);
        let gap = self.gap_before(cp.index);
        match &self.prev {
            Prev::Start if !gap && cp.prev_mac != GENESIS => {
                self.problem(at, "the first checkpoint does not start the chain".into())
            }
            Prev::Known(prev) => {
                let (prev_index, prev_mac, prev_seq) =
                    (prev.index, prev.mac.clone(), prev.head_seq);
                if !gap && cp.prev_mac != prev_mac {
                    self.problem(
                        at,
                        format!(
                            "it does not chain to checkpoint {prev_index}: one of them was \
                             replaced, or sever refused to chain onto checkpoint {prev_index}"
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
            _ => {}
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
        self.newest = Some(cp.clone());
        self.prev = Prev::Known(cp);
    }

    /// A checkpoint row at `index` that cannot be read as the schema says.
    fn unreadable(&mut self, index: i64, what: String) {
        self.report.checked += 1;
        self.gap_before(index);
        self.problem(Some(index), what);
        self.prev = Prev::Unreadable(index);
    }

    /// The checkpoint table cannot be read after `after` (dropped, or its key column altered).
    fn table_unreadable(&mut self, after: i64, what: String) {
        self.problem(
            Some(after + 1),
            format!(
                "the audit_checkpoints table cannot be read from checkpoint {} on: it was \
                 dropped or altered ({what})",
                after + 1
            ),
        );
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
        if let Some(pin) = self.pin
            && !self.pin_seen
        {
            self.problem(
                Some(pin.index),
                "the checkpoint pinned by audit.unkeyed_checkpoints_through is not in the store: \
                 it was deleted"
                    .into(),
            );
        }
        if self.unpinned {
            let candidate = match (&self.keyed_from, self.seen_keyed) {
                (Some(from), _) => Some(from),
                (None, false) => self.newest_unkeyed.as_ref(),
                (None, true) => None,
            };
            self.report.suggested_pin = candidate
                .map(|cp| UnkeyedPin {
                    index: cp.index,
                    mac: cp.mac.clone(),
                })
                .filter(|suggested| Some(suggested) != self.pin);
        }
        let newest = self.newest.take();
        if let Some(newest) = &newest {
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
        // Each checkpoint with the hash of the record it covers, if that still exists.
        const CHECKPOINTS: Table = Table {
            page: "SELECT c.idx, c.at, c.head_seq, c.head_hash, c.prev_mac, c.alg, c.mac, \
                   r.hash AS record_hash \
                   FROM audit_checkpoints c LEFT JOIN audit_records r ON r.seq = c.head_seq \
                   WHERE c.idx > $1 ORDER BY c.idx LIMIT $2",
            keys: "SELECT idx FROM audit_checkpoints WHERE idx > $1 ORDER BY idx LIMIT $2",
            one: "SELECT c.idx, c.at, c.head_seq, c.head_hash, c.prev_mac, c.alg, c.mac, \
                  r.hash AS record_hash \
                  FROM audit_checkpoints c LEFT JOIN audit_records r ON r.seq = c.head_seq \
                  WHERE c.idx = $1",
            key: "idx",
        };
        let mut verifier = CheckpointVerifier::new(options);
        let fault = read::scan(
            self.store.pool(),
            &CHECKPOINTS,
            decode_joined,
            |index, row| {
                match row {
                    Ok((cp, record_hash)) => verifier.push(cp, record_hash.as_deref()),
                    Err(what) => verifier.unreadable(index, what),
                }
                Ok(())
            },
        )
        .await?;
        if let Some(fault) = fault {
            verifier.table_unreadable(fault.after, fault.what);
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
                    let hash = sqlx::query("SELECT hash FROM audit_records WHERE seq = $1")
                        .bind(missing.head_seq)
                        .fetch_optional(self.store.pool())
                        .await;
                    let hash = match hash {
                        Ok(row) => row.map(|row| record_hash(&row, "hash")),
                        // The record part of the report names what is wrong with the table.
                        Err(e) if is_content_error(&e) => Some(String::new()),
                        Err(e) => return Err(e.into()),
                    };
                    verifier.anchored_record(&missing, hash.as_deref());
                }
            }
        }
        let now = options.now.unwrap_or_else(Utc::now);
        Ok(verifier.finish(head_seq, options.max_checkpoint_age, now))
    }
}

/// A checkpoint with the hash of the record it covers (`None`: no such record).
fn decode_joined(row: &AnyRow) -> Result<(Checkpoint, Option<String>), String> {
    let cp = decode(row)?;
    // The record's own problem is named by the chain check; here it only fails to match.
    let covered =
        column::<Option<String>>(row, "record_hash").unwrap_or_else(|_| Some(String::new()));
    Ok((cp, covered))
}

/// A record's `hash` column, or an empty string (which matches nothing) when it is not text.
fn record_hash(row: &AnyRow, col: &str) -> String {
    column::<String>(row, col).unwrap_or_default()
}
