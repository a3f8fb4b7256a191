//! Checkpoints: periodic snapshots of the trail's head (newest `seq` and its hash), each
//! MACed with `audit.checkpoint_key` and chained to the previous checkpoint's MAC.
//!
//! The hash chain shows edits, deletions and reorderings, but not the removal of the newest
//! records: the shortened chain is still a valid chain. A checkpoint names a record that must
//! exist with a given hash, so truncating below it is detected. Deleting the newest
//! checkpoints too is detected by their age (`audit verify --max-checkpoint-age`), by the
//! writer noticing that checkpoints it wrote are gone, and by the copy kept outside the store
//! (`audit.checkpoint_file`, `audit verify --checkpoints`). Without the key nobody can forge a
//! checkpoint that verifies, so a rewritten trail cannot be given new ones.

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tokio_util::sync::CancellationToken;

use super::{Audit, AuditError, CheckpointFileHealth, GENESIS};
use crate::config::{AuditConfig, ConfigError};
use crate::context::{Context, ContextError};
use crate::store::{Backend, Store, timestamp};

type HmacSha256 = hmac::Hmac<Sha256>;

/// `alg` of a checkpoint MACed with `audit.checkpoint_key`.
pub const KEYED: &str = "hmac-sha256";
/// `alg` of a checkpoint written without a key: a plain digest anyone can recompute.
pub const UNKEYED: &str = "sha256";
/// Shortest accepted key; HMAC-SHA256 gains nothing from more than 64 bytes.
const MIN_KEY_LEN: usize = 32;
/// Checkpoint problems listed per verification: a wrong key would otherwise list them all.
const MAX_PROBLEMS: usize = 100;
/// Checkpoints read per query while verifying.
const PAGE: i64 = 1000;
/// Separates checkpoint MACs from any other use of the same key.
const DOMAIN: &str = "sever-audit-checkpoint-v1";

/// The stored columns, in one place for every statement (sqlx wants static SQL text).
macro_rules! checkpoint_columns {
    () => {
        "idx, at, head_seq, head_hash, prev_mac, alg, mac"
    };
}

/// One checkpoint, as stored and as written to the checkpoint file (one JSON line each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Position in the checkpoint chain, from 1, without gaps.
    pub index: i64,
    /// When it was written (RFC 3339, UTC, microseconds).
    pub at: String,
    /// `seq` of the newest record at that moment (0: the trail was empty).
    pub head_seq: i64,
    /// That record's hash ([`GENESIS`] for an empty trail).
    pub head_hash: String,
    /// The previous checkpoint's `mac` ([`GENESIS`] for the first).
    pub prev_mac: String,
    /// [`KEYED`] or [`UNKEYED`].
    pub alg: String,
    /// Hex MAC (or digest) over every field above.
    pub mac: String,
}

impl Checkpoint {
    /// The canonical text the MAC covers: a JSON array of the fields in a fixed order.
    fn message(&self) -> String {
        serde_json::to_string(&(
            DOMAIN,
            self.index,
            &self.at,
            self.head_seq,
            &self.head_hash,
            &self.prev_mac,
            &self.alg,
        ))
        .expect("a tuple of strings and integers always serialises")
    }

    /// Sets `alg` and `mac`: keyed when there is a key.
    fn seal(&mut self, key: Option<&CheckpointKey>) {
        self.alg = if key.is_some() { KEYED } else { UNKEYED }.to_owned();
        self.mac = match key {
            Some(key) => hex::encode(key.mac(&self.message()).finalize().into_bytes()),
            None => hex::encode(Sha256::digest(self.message().as_bytes())),
        };
    }

    /// Checks `mac` against any of `keys`; `Err` says why it does not check out.
    fn check(&self, keys: &[CheckpointKey]) -> Result<(), String> {
        match self.alg.as_str() {
            KEYED if keys.is_empty() => {
                Err("it is keyed, but no audit.checkpoint_key is configured".into())
            }
            KEYED => {
                let presented = hex::decode(&self.mac).map_err(|_| "its MAC is not hex")?;
                let message = self.message();
                // `verify_slice` compares in constant time.
                if keys
                    .iter()
                    .any(|key| key.mac(&message).verify_slice(&presented).is_ok())
                {
                    Ok(())
                } else {
                    Err(
                        "its MAC does not verify: it was forged or altered, or made with a key \
                         that is not configured"
                            .into(),
                    )
                }
            }
            UNKEYED => {
                if hex::encode(Sha256::digest(self.message().as_bytes())) == self.mac {
                    Ok(())
                } else {
                    Err("its digest does not match its content: it was altered".into())
                }
            }
            other => Err(format!(
                "unknown alg {:?}",
                other.chars().take(16).collect::<String>()
            )),
        }
    }
}

/// The checkpoint MAC key (`audit.checkpoint_key`); never printed.
#[derive(Clone)]
pub struct CheckpointKey(SecretSlice<u8>);

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointKey(<redacted>)")
    }
}

impl CheckpointKey {
    /// Loads `audit.checkpoint_key`, if configured.
    pub fn load(config: &AuditConfig) -> Result<Option<Self>, ConfigError> {
        const WHAT: &str = "audit.checkpoint_key";
        let Some(source) = &config.checkpoint_key else {
            return Ok(None);
        };
        Self::new(source.load(WHAT)?)
            .map(Some)
            .ok_or(ConfigError::Secret {
                what: WHAT.to_owned(),
                source_name: source.describe(),
                reason: format!("shorter than {MIN_KEY_LEN} bytes (try `openssl rand -hex 32`)"),
            })
    }

    /// The current key, then `audit.checkpoint_previous_keys`: every key verification accepts.
    pub fn load_all(config: &AuditConfig) -> Result<Vec<Self>, ConfigError> {
        let mut keys: Vec<Self> = Self::load(config)?.into_iter().collect();
        for (i, source) in config.checkpoint_previous_keys.iter().enumerate() {
            let what = format!("audit.checkpoint_previous_keys[{i}]");
            let key = Self::new(source.load(&what)?).ok_or_else(|| ConfigError::Secret {
                what,
                source_name: source.describe(),
                reason: format!("shorter than {MIN_KEY_LEN} bytes"),
            })?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// A key from its text; `None` when it is shorter than 32 bytes.
    pub fn new(secret: SecretString) -> Option<Self> {
        let bytes = secret.expose_secret().as_bytes();
        (bytes.len() >= MIN_KEY_LEN).then(|| Self(SecretSlice::from(bytes.to_vec())))
    }

    fn mac(&self, message: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(self.0.expose_secret())
            .expect("HMAC accepts keys of any length");
        mac.update(message.as_bytes());
        mac
    }
}

/// A checkpoint just written, and anything the writer noticed that should not be.
#[derive(Debug, Clone)]
pub struct Written {
    /// The new checkpoint.
    pub checkpoint: Checkpoint,
    /// Signs of tampering since the writer's previous checkpoint, in words.
    pub tampering: Vec<String>,
}

/// Writes checkpoints, remembering its last one to notice the store going backwards.
#[derive(Debug, Default)]
pub struct Writer {
    key: Option<CheckpointKey>,
    file: Option<PathBuf>,
    last: Option<Checkpoint>,
    file_health: Arc<CheckpointFileHealth>,
}

impl Writer {
    /// A writer with the configured key and checkpoint file (which must be appendable).
    pub fn from_config(config: &AuditConfig) -> Result<Self, ConfigError> {
        if let Some(path) = &config.checkpoint_file {
            // Fail at start-up rather than at every checkpoint.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| ConfigError::Invalid {
                    path: "audit.checkpoint_file".into(),
                    reason: format!("cannot append to {}: {e}", path.display()),
                })?;
        }
        Ok(Self::new(
            CheckpointKey::load(config)?,
            config.checkpoint_file.clone(),
        ))
    }

    /// A writer MACing with `key` and appending to `file`.
    pub fn new(key: Option<CheckpointKey>, file: Option<PathBuf>) -> Self {
        Self {
            file_health: Arc::new(CheckpointFileHealth::new(file.is_some())),
            key,
            file,
            last: None,
        }
    }

    /// Records the outcome of each append to the checkpoint file in `health` (for readiness).
    pub fn reporting_to(mut self, health: Arc<CheckpointFileHealth>) -> Self {
        self.file_health = health;
        self
    }

    /// Writes one checkpoint to the store, then to the checkpoint file and the log; logs any
    /// tampering noticed as an error.
    pub async fn write(&mut self, audit: &Audit) -> Result<Written, AuditError> {
        let written = audit
            .write_checkpoint(self.key.as_ref(), self.last.as_ref())
            .await?;
        let cp = &written.checkpoint;
        self.last = Some(cp.clone());
        for what in &written.tampering {
            tracing::error!(checkpoint = cp.index, "audit trail tampered with: {what}");
        }
        tracing::info!(
            index = cp.index,
            at = %cp.at,
            head_seq = cp.head_seq,
            head_hash = %cp.head_hash,
            prev_mac = %cp.prev_mac,
            alg = %cp.alg,
            mac = %cp.mac,
            "audit checkpoint"
        );
        if let Some(path) = &self.file {
            let appended = append_line(path, cp);
            self.file_health.record(path, &appended);
            appended.map_err(|source| AuditError::CheckpointFile {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(written)
    }
}

/// Appends `cp` as one JSON line and flushes it to disk.
fn append_line(path: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(cp).map_err(std::io::Error::from)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write call per line, so writers sharing the file never interleave within a line.
    file.write_all(&line)?;
    file.sync_data()
}

/// The periodic checkpoint writer of the server: one checkpoint at start, one every
/// `audit.checkpoint_interval` (also when nothing changed, so a missing one is evidence), and
/// a last one when `stop` fires. Fails at once if the key cannot be loaded.
pub fn checkpoint_writer(
    ctx: Arc<Context>,
    stop: CancellationToken,
) -> Result<impl Future<Output = ()> + Send + 'static, ContextError> {
    let mut writer =
        Writer::from_config(&ctx.config.audit)?.reporting_to(ctx.checkpoint_file.clone());
    let every = ctx.config.audit.checkpoint_interval;
    Ok(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            if let Err(e) = writer.write(&ctx.audit).await {
                // A gap in the tamper evidence (or its outside copy): an error, not a warning.
                tracing::error!(error = %e, "could not write an audit checkpoint");
            }
            if stopping {
                return;
            }
        }
    })
}

/// Opens a transaction holding the chain's write lock, which every append and checkpoint
/// takes: SQLite's write lock (taken before the head is read, so a concurrent writer waits
/// instead of failing), or PostgreSQL advisory lock 7262837 (serialising replicas).
pub(super) async fn begin_chain_tx(
    store: &Store,
) -> Result<Transaction<'static, Any>, sqlx::Error> {
    let pool = store.pool();
    match store.backend() {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7262837)")
                .execute(&mut *tx)
                .await?;
            Ok(tx)
        }
    }
}

fn decode(row: &AnyRow) -> Result<Checkpoint, sqlx::Error> {
    Ok(Checkpoint {
        index: row.try_get("idx")?,
        at: row.try_get("at")?,
        head_seq: row.try_get("head_seq")?,
        head_hash: row.try_get("head_hash")?,
        prev_mac: row.try_get("prev_mac")?,
        alg: row.try_get("alg")?,
        mac: row.try_get("mac")?,
    })
}

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
pub(super) struct CheckpointVerifier<'k> {
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
    pub(super) fn new(keys: &'k [CheckpointKey], keep_macs: bool) -> Self {
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
    pub(super) fn push(&mut self, cp: Checkpoint, record_hash: Option<&str>) {
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
    pub(super) fn push_anchor(&mut self, line_no: usize, line: &str) -> Option<Checkpoint> {
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
    pub(super) fn anchored_record(&mut self, cp: &Checkpoint, record_hash: Option<&str>) {
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
    pub(super) fn finish(
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
    /// Writes one checkpoint of the current head, under the chain's write lock. `last` is the
    /// caller's previous checkpoint: if the store no longer holds it, or no longer holds the
    /// record it covered, that is reported as tampering and the new checkpoint chains to
    /// `last` rather than to what the store now says, so the gap stays visible.
    pub async fn write_checkpoint(
        &self,
        key: Option<&CheckpointKey>,
        last: Option<&Checkpoint>,
    ) -> Result<Written, AuditError> {
        let _guard = self.append_lock.lock().await;
        let mut tx = begin_chain_tx(&self.store).await?;
        let newest = sqlx::query(concat!(
            "SELECT ",
            checkpoint_columns!(),
            " FROM audit_checkpoints ORDER BY idx DESC LIMIT 1"
        ))
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| decode(&row))
        .transpose()?;
        let head = sqlx::query("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let (head_seq, head_hash) = match head {
            Some(row) => (row.try_get::<i64, _>("seq")?, row.try_get("hash")?),
            None => (0, GENESIS.to_owned()),
        };
        let mut tampering = Vec::new();
        let mut prev = newest.clone();
        if let Some(last) = last {
            match &newest {
                Some(n) if n.index >= last.index => {
                    let mac: Option<String> =
                        sqlx::query_scalar("SELECT mac FROM audit_checkpoints WHERE idx = $1")
                            .bind(last.index)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if mac.as_deref() != Some(last.mac.as_str()) {
                        tampering.push(format!(
                            "checkpoint {} that this process wrote was replaced or removed",
                            last.index
                        ));
                    }
                }
                _ => {
                    tampering.push(format!(
                        "checkpoint {} that this process wrote was removed (the store's newest is \
                         {})",
                        last.index,
                        newest.as_ref().map_or(0, |n| n.index)
                    ));
                    prev = Some(last.clone());
                }
            }
            if last.head_seq > 0 {
                let hash: Option<String> =
                    sqlx::query_scalar("SELECT hash FROM audit_records WHERE seq = $1")
                        .bind(last.head_seq)
                        .fetch_optional(&mut *tx)
                        .await?;
                if hash.as_deref() != Some(last.head_hash.as_str()) {
                    tampering.push(format!(
                        "record seq {} covered by checkpoint {} was removed or altered: the trail \
                         was truncated or rewritten",
                        last.head_seq, last.index
                    ));
                }
            }
        }
        let (index, prev_mac) = prev.map_or((1, GENESIS.to_owned()), |p| (p.index + 1, p.mac));
        let mut checkpoint = Checkpoint {
            index,
            at: timestamp(Utc::now()),
            head_seq,
            head_hash,
            prev_mac,
            alg: String::new(),
            mac: String::new(),
        };
        checkpoint.seal(key);
        sqlx::query(concat!(
            "INSERT INTO audit_checkpoints (",
            checkpoint_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(checkpoint.index)
        .bind(&checkpoint.at)
        .bind(checkpoint.head_seq)
        .bind(&checkpoint.head_hash)
        .bind(&checkpoint.prev_mac)
        .bind(&checkpoint.alg)
        .bind(&checkpoint.mac)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Written {
            checkpoint,
            tampering,
        })
    }

    /// Checks every checkpoint in the store (and the checkpoint file, if given) against the
    /// trail whose newest record is `head_seq`.
    pub(super) async fn verify_checkpoints(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Entry, Kind};
    use serde_json::json;

    fn key(text: &str) -> CheckpointKey {
        CheckpointKey::new(SecretString::from(text.repeat(32))).unwrap()
    }

    async fn audit() -> (tempfile::TempDir, Audit) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let store = Store::connect(&SecretString::from(url)).await.unwrap();
        (dir, Audit::new(store))
    }

    async fn append(audit: &Audit, n: usize) {
        for i in 0..n {
            audit
                .append(Entry::new(
                    Kind::RequestRejected,
                    "test",
                    None,
                    json!({"i": i}),
                ))
                .await
                .unwrap();
        }
    }

    fn options(key: Option<&CheckpointKey>) -> VerifyOptions {
        VerifyOptions {
            keys: key.into_iter().cloned().collect(),
            ..Default::default()
        }
    }

    async fn problems(audit: &Audit, options: &VerifyOptions) -> Vec<String> {
        let report = audit.verify_with(options).await.unwrap();
        assert_eq!(
            report.ok,
            report.problems.is_empty() && report.checkpoints.problems.is_empty()
        );
        report
            .checkpoints
            .problems
            .iter()
            .map(|p| format!("{:?}: {}", p.index, p.what))
            .collect()
    }

    async fn exec(audit: &Audit, sql: &'static str) {
        sqlx::query(sql).execute(audit.store.pool()).await.unwrap();
    }

    #[test]
    fn keys_shorter_than_32_bytes_are_refused_and_never_printed() {
        assert!(CheckpointKey::new(SecretString::from("x".repeat(31))).is_none());
        let k = key("s");
        assert!(!format!("{k:?}").contains("sss"));
    }

    #[test]
    fn a_checkpoint_verifies_only_with_its_key_and_content() {
        let mut cp = Checkpoint {
            index: 1,
            at: "2026-01-01T00:00:00.000000Z".into(),
            head_seq: 3,
            head_hash: "ab".repeat(32),
            prev_mac: GENESIS.into(),
            alg: String::new(),
            mac: String::new(),
        };
        cp.seal(Some(&key("a")));
        assert_eq!(cp.alg, KEYED);
        cp.check(&[key("a")]).unwrap();
        assert!(cp.check(&[key("b")]).unwrap_err().contains("MAC"));
        // After a key rotation the previous key still verifies what it made.
        cp.check(&[key("b"), key("a")]).unwrap();
        assert!(
            cp.check(&[])
                .unwrap_err()
                .contains("no audit.checkpoint_key")
        );
        let mut moved = cp.clone();
        moved.head_seq = 2;
        assert!(moved.check(&[key("a")]).is_err());
        // Relabelling a keyed checkpoint as unkeyed does not make it check out.
        let mut relabelled = cp.clone();
        relabelled.alg = UNKEYED.into();
        assert!(relabelled.check(&[]).is_err());

        cp.seal(None);
        assert_eq!(cp.alg, UNKEYED);
        cp.check(&[]).unwrap();
        cp.check(&[key("a")]).unwrap();
    }

    #[tokio::test]
    async fn checkpoints_chain_and_verify_even_when_nothing_changed() {
        let (_dir, audit) = audit().await;
        let k = key("k");
        let mut writer = Writer::new(Some(k.clone()), None);
        let first = writer.write(&audit).await.unwrap().checkpoint;
        assert_eq!((first.index, first.head_seq), (1, 0));
        assert_eq!(first.prev_mac, GENESIS);
        append(&audit, 3).await;
        let second = writer.write(&audit).await.unwrap();
        assert!(second.tampering.is_empty(), "{:?}", second.tampering);
        let third = writer.write(&audit).await.unwrap().checkpoint;
        assert_eq!((third.index, third.head_seq), (3, 3));
        assert_eq!(third.prev_mac, second.checkpoint.mac);

        let report = audit.verify_with(&options(Some(&k))).await.unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.checkpoints.checked, 3);
        assert_eq!(report.checkpoints.newest.as_ref(), Some(&third));
        assert_eq!(report.checkpoints.uncovered_records, 0);
        append(&audit, 2).await;
        let report = audit.verify_with(&options(Some(&k))).await.unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.checkpoints.uncovered_records, 2);
    }

    #[tokio::test]
    async fn truncating_the_tail_below_a_checkpoint_is_named() {
        let (_dir, audit) = audit().await;
        let k = key("k");
        let mut writer = Writer::new(Some(k.clone()), None);
        append(&audit, 5).await;
        writer.write(&audit).await.unwrap();
        exec(&audit, "DELETE FROM audit_records WHERE seq >= 4").await;
        // The shortened chain is a valid chain: only the checkpoint shows the truncation.
        let report = audit.verify_with(&options(Some(&k))).await.unwrap();
        assert!(report.problems.is_empty());
        assert!(!report.ok);
        let found = problems(&audit, &options(Some(&k))).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("record seq 5") && found[0].contains("truncated"));

        // Re-appending the same seq numbers gives different hashes: still named.
        append(&audit, 2).await;
        let found = problems(&audit, &options(Some(&k))).await;
        assert!(found[0].contains("no longer has the hash"), "{found:?}");

        // The writer that made the checkpoint notices at its next one, and that next one
        // records the shorter head, which verify names too.
        let written = writer.write(&audit).await.unwrap();
        assert!(written.tampering[0].contains("record seq 5"), "{written:?}");
        let found = problems(&audit, &options(Some(&k))).await;
        assert!(found.iter().any(|p| p.contains("no longer has the hash")));
    }

    #[tokio::test]
    async fn deleting_the_newest_checkpoints_too_is_stale_and_leaves_a_gap() {
        let (_dir, audit) = audit().await;
        let k = key("k");
        let mut writer = Writer::new(Some(k.clone()), None);
        append(&audit, 2).await;
        let first = writer.write(&audit).await.unwrap().checkpoint;
        append(&audit, 2).await;
        writer.write(&audit).await.unwrap();
        writer.write(&audit).await.unwrap();
        exec(&audit, "DELETE FROM audit_records WHERE seq > 2").await;
        exec(&audit, "DELETE FROM audit_checkpoints WHERE idx > 1").await;
        // Consistent on its own: only the age of the newest checkpoint gives it away.
        assert!(problems(&audit, &options(Some(&k))).await.is_empty());
        let written_at = DateTime::parse_from_rfc3339(&first.at).unwrap().to_utc();
        let stale = VerifyOptions {
            keys: vec![k.clone()],
            max_checkpoint_age: Some(Duration::from_secs(180)),
            now: Some(written_at + chrono::Duration::seconds(600)),
            ..Default::default()
        };
        let found = problems(&audit, &stale).await;
        assert!(
            found[0].contains("newest checkpoint is 10m old"),
            "{found:?}"
        );
        let fresh = VerifyOptions {
            now: Some(written_at + chrono::Duration::seconds(60)),
            ..stale.clone()
        };
        assert!(problems(&audit, &fresh).await.is_empty());

        // The running writer notices and keeps its own chain, leaving a visible gap.
        let written = writer.write(&audit).await.unwrap();
        assert!(
            written.tampering.iter().any(|t| t.contains("removed")),
            "{written:?}"
        );
        assert_eq!(written.checkpoint.index, 4);
        let found = problems(&audit, &options(Some(&k))).await;
        assert!(
            found
                .iter()
                .any(|p| p.contains("checkpoints 2..3 are missing"))
        );
    }

    #[tokio::test]
    async fn forged_and_unkeyed_checkpoints_are_refused_when_a_key_is_configured() {
        let (_dir, audit) = audit().await;
        let k = key("k");
        append(&audit, 2).await;
        Writer::new(None, None).write(&audit).await.unwrap();
        Writer::new(Some(k.clone()), None)
            .write(&audit)
            .await
            .unwrap();
        // Unkeyed history before the key was configured is accepted.
        assert!(problems(&audit, &options(Some(&k))).await.is_empty());
        // Whoever lacks the key can only add unkeyed or wrongly keyed checkpoints.
        Writer::new(None, None).write(&audit).await.unwrap();
        let found = problems(&audit, &options(Some(&k))).await;
        assert!(found.iter().any(|p| p.contains("not written by sever")));
        assert!(
            found
                .iter()
                .any(|p| p.contains("newest checkpoint is unkeyed"))
        );
        Writer::new(Some(key("x")), None)
            .write(&audit)
            .await
            .unwrap();
        let found = problems(&audit, &options(Some(&k))).await;
        assert!(found.iter().any(|p| p.contains("MAC does not verify")));
        // Keyed checkpoints cannot be checked without the key: that is a failure, not a pass.
        let found = problems(&audit, &options(None)).await;
        assert!(
            found
                .iter()
                .any(|p| p.contains("2 checkpoint(s) are keyed"))
        );
    }

    #[tokio::test]
    async fn the_checkpoint_file_shows_a_store_rolled_back_wholesale() {
        let (dir, audit) = audit().await;
        let k = key("k");
        let file = dir.path().join("checkpoints.jsonl");
        let mut writer = Writer::new(Some(k.clone()), Some(file.clone()));
        append(&audit, 2).await;
        writer.write(&audit).await.unwrap();
        append(&audit, 2).await;
        writer.write(&audit).await.unwrap();
        let with_file = VerifyOptions {
            keys: vec![k.clone()],
            checkpoint_file: Some(file.clone()),
            ..Default::default()
        };
        let report = audit.verify_with(&with_file).await.unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.checkpoints.anchored, 2);
        let lines = std::fs::read_to_string(&file).unwrap();
        assert_eq!(lines.lines().count(), 2);
        assert!(lines.lines().all(|l| l.contains("\"alg\":\"hmac-sha256\"")));

        // Back to the state after the first checkpoint: consistent, but not with the file.
        exec(&audit, "DELETE FROM audit_records WHERE seq > 2").await;
        exec(&audit, "DELETE FROM audit_checkpoints WHERE idx > 1").await;
        assert!(problems(&audit, &options(Some(&k))).await.is_empty());
        let found = problems(&audit, &with_file).await;
        assert!(
            found.iter().any(|p| p.starts_with("Some(2)")
                && p.contains("in the checkpoint file (line 2) but not in the store")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("record seq 4")),
            "{found:?}"
        );

        std::fs::write(&file, format!("{lines}not json\n")).unwrap();
        let found = problems(&audit, &with_file).await;
        assert!(
            found
                .iter()
                .any(|p| p.contains("line 3 is not a checkpoint"))
        );
        let missing = VerifyOptions {
            checkpoint_file: Some(dir.path().join("nope")),
            ..with_file
        };
        assert!(matches!(
            audit.verify_with(&missing).await,
            Err(AuditError::CheckpointFile { .. })
        ));
    }

    #[test]
    fn an_unwritable_checkpoint_file_is_a_config_error() {
        let config = AuditConfig {
            checkpoint_file: Some("/nonexistent-dir/checkpoints.jsonl".into()),
            ..Default::default()
        };
        let e = Writer::from_config(&config).unwrap_err().to_string();
        assert!(e.contains("audit.checkpoint_file"), "{e}");
    }

    #[tokio::test]
    async fn without_checkpoints_an_age_limit_fails_and_no_limit_passes() {
        let (_dir, audit) = audit().await;
        append(&audit, 1).await;
        let report = audit.verify_with(&options(None)).await.unwrap();
        assert!(report.ok);
        assert_eq!(report.checkpoints.uncovered_records, 1);
        let limited = VerifyOptions {
            max_checkpoint_age: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let found = problems(&audit, &limited).await;
        assert!(found[0].contains("there is no checkpoint"), "{found:?}");
    }

    #[tokio::test]
    async fn writers_in_two_processes_keep_one_checkpoint_chain() {
        let (_dir, audit) = audit().await;
        let k = key("k");
        let audit = Arc::new(audit);
        // A second `Audit` on the same file stands in for another process.
        let other = Audit::new(audit.store.clone());
        let mut a = Writer::new(Some(k.clone()), None);
        let mut b = Writer::new(Some(k.clone()), None);
        for _ in 0..5 {
            let (x, y) = tokio::join!(a.write(&audit), b.write(&other));
            assert!(x.unwrap().tampering.is_empty());
            assert!(y.unwrap().tampering.is_empty());
            append(&audit, 1).await;
        }
        let report = audit.verify_with(&options(Some(&k))).await.unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.checkpoints.checked, 10);
    }
}
