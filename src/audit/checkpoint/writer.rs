//! Writing checkpoints: the server's periodic writer and `sever audit checkpoint`.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tokio_util::sync::CancellationToken;

use super::{Checkpoint, CheckpointKey, KEYED, decode};
use crate::audit::read::column;
use crate::audit::{Audit, AuditError, CheckpointFileHealth, GENESIS, begin_chain_tx};
use crate::config::{AuditConfig, ConfigError, UnkeyedPin};
use crate::store::timestamp;

/// Most checkpoints a running writer follows back to its own last one. Replicas add one each
/// per interval, so more than this means someone filled the table.
const MAX_WALK: i64 = 10_000;
/// Checkpoints read per query while looking for one to chain onto at start.
const PAGE: i64 = 100;

/// A checkpoint just written, and anything the writer noticed that should not be.
#[derive(Debug, Clone)]
pub struct Written {
    /// The new checkpoint.
    pub checkpoint: Checkpoint,
    /// Signs of tampering since the writer's previous checkpoint, in words.
    pub tampering: Vec<String>,
}

/// The tampering the checkpoint writer noticed since start, shared with readiness. It stays
/// until restart: the evidence stays in the store, and `audit verify` names it.
#[derive(Debug, Default)]
pub struct ChainHealth {
    tampered: Mutex<Option<String>>,
}

impl ChainHealth {
    /// `Err` with the first tampering noticed, if any.
    pub fn state(&self) -> Result<(), String> {
        match &*self.lock() {
            None => Ok(()),
            Some(what) => Err(what.clone()),
        }
    }

    fn record(&self, what: &str) {
        let mut tampered = self.lock();
        if tampered.is_none() {
            *tampered = Some(format!(
                "audit trail tampered with: {what} (see the log and `sever audit verify`)"
            ));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A panic while holding this lock leaves a plain value behind, still valid.
        self.tampered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How a writer seals checkpoints and which ones it chains onto.
#[derive(Debug, Default)]
struct Trust {
    /// The key new checkpoints are MACed with.
    key: Option<CheckpointKey>,
    /// Every key accepted: `key`, then the previous keys.
    keys: Vec<CheckpointKey>,
    /// The last unkeyed checkpoint from before the key.
    pin: Option<UnkeyedPin>,
}

/// Writes checkpoints, remembering its last one to notice the store going backwards.
#[derive(Debug, Default)]
pub struct Writer {
    trust: Trust,
    file: Option<PathBuf>,
    last: Option<Checkpoint>,
    file_health: Arc<CheckpointFileHealth>,
    chain_health: Arc<ChainHealth>,
}

impl Writer {
    /// A writer with the configured keys, pin and checkpoint file (which must be appendable).
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
        let keys = CheckpointKey::load_all(config)?;
        let mut writer = Self::new(keys.first().cloned(), config.checkpoint_file.clone());
        writer.trust.keys = keys;
        writer.trust.pin = config.unkeyed_checkpoints_through.clone();
        Ok(writer)
    }

    /// A writer MACing with `key` (and trusting only it) and appending to `file`.
    pub fn new(key: Option<CheckpointKey>, file: Option<PathBuf>) -> Self {
        Self {
            file_health: Arc::new(CheckpointFileHealth::new(file.is_some())),
            chain_health: Arc::default(),
            trust: Trust {
                keys: key.iter().cloned().collect(),
                key,
                pin: None,
            },
            file,
            last: None,
        }
    }

    /// Also trusts unkeyed checkpoints up to `pin` (`audit.unkeyed_checkpoints_through`).
    pub fn pinning(mut self, pin: Option<UnkeyedPin>) -> Self {
        self.trust.pin = pin;
        self
    }

    /// Records the outcome of each append to the checkpoint file in `file`, and any tampering
    /// noticed in `chain` (for readiness).
    pub fn reporting_to(
        mut self,
        file: Arc<CheckpointFileHealth>,
        chain: Arc<ChainHealth>,
    ) -> Self {
        self.file_health = file;
        self.chain_health = chain;
        self
    }

    /// Writes one checkpoint to the store, then to the checkpoint file and the log; logs any
    /// tampering noticed as an error.
    pub async fn write(&mut self, audit: &Audit) -> Result<Written, AuditError> {
        let written = audit
            .write_checkpoint(&self.trust, self.last.as_ref())
            .await?;
        let cp = &written.checkpoint;
        self.last = Some(cp.clone());
        for what in &written.tampering {
            tracing::error!(checkpoint = cp.index, "audit trail tampered with: {what}");
            self.chain_health.record(what);
        }
        crate::telemetry::checkpoint_written();
        crate::telemetry::chain_checked(self.chain_health.state().is_ok());
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
/// a last one when `stop` fires. It writes to `audit`, reports to `file` and `chain` (for
/// readiness), and takes its settings from `config`. Fails at once if the key cannot be
/// loaded.
pub fn checkpoint_writer(
    config: &AuditConfig,
    audit: Audit,
    file: Arc<CheckpointFileHealth>,
    chain: Arc<ChainHealth>,
    stop: CancellationToken,
) -> Result<impl Future<Output = ()> + Send + 'static, ConfigError> {
    let mut writer = Writer::from_config(config)?.reporting_to(file, chain);
    let every = config.checkpoint_interval;
    Ok(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            if let Err(e) = writer.write(&audit).await {
                // A gap in the tamper evidence (or its outside copy): an error, not a warning.
                tracing::error!(error = %e, "could not write an audit checkpoint");
            }
            if stopping {
                return;
            }
        }
    })
}

impl Audit {
    /// Writes one checkpoint of the current head, under the chain's write lock, chained onto
    /// a checkpoint `trust` accepts; whatever it passes over is reported as tampering.
    ///
    /// - Without `last` (the first write after start): onto the store's newest checkpoint
    ///   that checks out (MAC, key and pin rules, and the record it covers is still there),
    ///   or onto nothing (a new chain) when none does.
    /// - With `last`: onto the store's newest checkpoint if it checks out and its chain leads
    ///   back to `last` (another replica's checkpoints do), otherwise onto `last`.
    /// - Without a key anything can be forged, so only `last` going missing is noticed.
    ///
    /// The new checkpoint takes the next free index, so what it passed over stays in place
    /// and `audit verify` names it.
    async fn write_checkpoint(
        &self,
        trust: &Trust,
        last: Option<&Checkpoint>,
    ) -> Result<Written, AuditError> {
        let _guard = self.append_lock.lock().await;
        let mut tx = begin_chain_tx(&self.store).await?;
        let newest_index: Option<i64> =
            sqlx::query_scalar("SELECT MAX(idx) FROM audit_checkpoints")
                .fetch_one(&mut *tx)
                .await?;
        let newest_index = newest_index.unwrap_or(0);
        let head = sqlx::query("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let (head_seq, head_hash) = match head {
            Some(row) => (row.try_get::<i64, _>("seq")?, row.try_get("hash")?),
            None => (0, GENESIS.to_owned()),
        };
        let mut tampering = Vec::new();
        if let Some(last) = last
            && last.head_seq > 0
            && covered_hash(&mut tx, last.head_seq).await?.as_deref() != Some(&last.head_hash)
        {
            tampering.push(format!(
                "record seq {} covered by checkpoint {} was removed or altered: the trail was \
                 truncated or rewritten",
                last.head_seq, last.index
            ));
        }
        let prev = match last {
            Some(last) if newest_index < last.index => {
                tampering.push(format!(
                    "checkpoint {} that this process wrote was removed (the store's newest is \
                     {newest_index})",
                    last.index
                ));
                Some(last.clone())
            }
            Some(last) if trust.keys.is_empty() => {
                let newest = checkpoint_at(&mut tx, newest_index).await?;
                let mac = checkpoint_at(&mut tx, last.index)
                    .await?
                    .ok()
                    .map(|cp| cp.mac);
                if mac.as_deref() != Some(&last.mac) {
                    tampering.push(format!(
                        "checkpoint {} that this process wrote was replaced or removed",
                        last.index
                    ));
                }
                newest.ok()
            }
            None if trust.keys.is_empty() => checkpoint_at(&mut tx, newest_index).await?.ok(),
            Some(last) => match leads_back(&mut tx, trust, newest_index, last).await? {
                Ok(newest) => Some(newest),
                Err(why) => {
                    tampering.push(format!(
                        "checkpoint {newest_index}, the store's newest, {why}; the new \
                         checkpoint chains onto checkpoint {} that this process wrote",
                        last.index
                    ));
                    Some(last.clone())
                }
            },
            None => {
                let (found, passed) = newest_trusted(&mut tx, trust, newest_index).await?;
                if let Some((index, why)) = passed.first() {
                    let onto = found.as_ref().map_or_else(
                        || "nothing: it starts a new chain".to_owned(),
                        |cp| format!("checkpoint {}", cp.index),
                    );
                    tampering.push(format!(
                        "checkpoint {index}, the store's newest, cannot be trusted: {why}; {} \
                         checkpoint(s) were passed over, and the new checkpoint chains onto \
                         {onto}",
                        passed.len()
                    ));
                }
                found
            }
        };
        let index = newest_index.max(last.map_or(0, |l| l.index)) + 1;
        let mut checkpoint = Checkpoint {
            index,
            at: timestamp(Utc::now()),
            head_seq,
            head_hash,
            prev_mac: prev.map_or_else(|| GENESIS.to_owned(), |p| p.mac),
            alg: String::new(),
            mac: String::new(),
        };
        checkpoint.seal(trust.key.as_ref());
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
}

/// The stored hash of record `seq` (`None`: no such record, or not text).
async fn covered_hash(
    tx: &mut Transaction<'static, Any>,
    seq: i64,
) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query("SELECT hash FROM audit_records WHERE seq = $1")
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.and_then(|row| column::<String>(&row, "hash").ok()))
}

/// The checkpoint at `index`, or why there is none that can be read.
async fn checkpoint_at(
    tx: &mut Transaction<'static, Any>,
    index: i64,
) -> Result<Result<Checkpoint, String>, sqlx::Error> {
    let row = sqlx::query(concat!(
        "SELECT ",
        checkpoint_columns!(),
        " FROM audit_checkpoints WHERE idx = $1"
    ))
    .bind(index)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match row {
        Some(row) => decode(&row),
        None => Err("is missing".into()),
    })
}

/// Whether `cp` can be chained onto: `trust` accepts it, and the record it covers is there.
async fn check_head(
    tx: &mut Transaction<'static, Any>,
    trust: &Trust,
    cp: &Checkpoint,
) -> Result<Result<(), String>, sqlx::Error> {
    if let Err(why) = cp.trusted(&trust.keys, trust.pin.as_ref()) {
        return Ok(Err(why));
    }
    // Below the pin an unkeyed checkpoint is history; only the pinned one may be built on.
    if !trust.keys.is_empty()
        && cp.alg != KEYED
        && trust.pin.as_ref().is_none_or(|pin| pin.index != cp.index)
    {
        return Ok(Err(
            "it is unkeyed and not the checkpoint audit.unkeyed_checkpoints_through pins".into(),
        ));
    }
    let covered = if cp.head_seq == 0 {
        cp.head_hash == GENESIS
    } else {
        covered_hash(tx, cp.head_seq).await?.as_deref() == Some(&cp.head_hash)
    };
    Ok(if covered {
        Ok(())
    } else {
        Err(format!(
            "record seq {}, which it covers, is missing or altered",
            cp.head_seq
        ))
    })
}

/// The store's newest checkpoint if it checks out and its chain of trusted checkpoints
/// leads back to `last`; otherwise why not.
async fn leads_back(
    tx: &mut Transaction<'static, Any>,
    trust: &Trust,
    newest_index: i64,
    last: &Checkpoint,
) -> Result<Result<Checkpoint, String>, sqlx::Error> {
    if newest_index - last.index > MAX_WALK {
        return Ok(Err(format!(
            "is more than {MAX_WALK} checkpoints past checkpoint {} that this process wrote",
            last.index
        )));
    }
    let rows = sqlx::query(concat!(
        "SELECT ",
        checkpoint_columns!(),
        " FROM audit_checkpoints WHERE idx >= $1 ORDER BY idx"
    ))
    .bind(last.index)
    .fetch_all(&mut **tx)
    .await?;
    let decoded: Vec<Result<Checkpoint, String>> = rows.iter().map(decode).collect();
    let by_mac: std::collections::HashMap<&str, &Checkpoint> = decoded
        .iter()
        .flatten()
        .map(|cp| (cp.mac.as_str(), cp))
        .collect();
    let newest = match decoded.last() {
        Some(Ok(cp)) if cp.index == newest_index => cp,
        Some(Err(why)) => return Ok(Err(format!("cannot be read: {why}"))),
        _ => return Ok(Err("is missing".into())),
    };
    if newest.index == last.index {
        return Ok(if newest.mac == last.mac {
            Ok(newest.clone())
        } else {
            Err(format!(
                "is checkpoint {} that this process wrote, replaced",
                last.index
            ))
        });
    }
    if let Err(why) = check_head(tx, trust, newest).await? {
        return Ok(Err(format!("cannot be trusted: {why}")));
    }
    // Follow the MACs back: another replica's checkpoints chain onto ours, or onto theirs
    // that chain onto ours.
    let mut cp = newest;
    loop {
        if cp.prev_mac == last.mac {
            return Ok(
                if by_mac
                    .get(last.mac.as_str())
                    .is_some_and(|own| own.index == last.index)
                {
                    Ok(newest.clone())
                } else {
                    Err(format!(
                        "chains onto checkpoint {}, which this process wrote but the store no \
                     longer holds unchanged",
                        last.index
                    ))
                },
            );
        }
        match by_mac.get(cp.prev_mac.as_str()) {
            Some(prev) if prev.index < cp.index => {
                if let Err(why) = prev.trusted(&trust.keys, trust.pin.as_ref()) {
                    return Ok(Err(format!(
                        "chains back through checkpoint {}, which cannot be trusted: {why}",
                        prev.index
                    )));
                }
                cp = prev;
            }
            _ => {
                return Ok(Err(format!(
                    "does not chain back to checkpoint {} that this process wrote",
                    last.index
                )));
            }
        }
    }
}

/// The newest checkpoint at or below `newest_index` that [`check_head`] accepts, and the
/// newer ones passed over, newest first, each with why.
async fn newest_trusted(
    tx: &mut Transaction<'static, Any>,
    trust: &Trust,
    newest_index: i64,
) -> Result<(Option<Checkpoint>, Vec<(i64, String)>), sqlx::Error> {
    let mut passed = Vec::new();
    let mut below = newest_index + 1;
    loop {
        let rows: Vec<AnyRow> = sqlx::query(concat!(
            "SELECT ",
            checkpoint_columns!(),
            " FROM audit_checkpoints WHERE idx < $1 ORDER BY idx DESC LIMIT $2"
        ))
        .bind(below)
        .bind(PAGE)
        .fetch_all(&mut **tx)
        .await?;
        for row in &rows {
            below = row.try_get::<i64, _>("idx")?;
            let verdict = match decode(row) {
                Ok(cp) => match check_head(tx, trust, &cp).await? {
                    Ok(()) => return Ok((Some(cp), passed)),
                    Err(why) => why,
                },
                Err(why) => why,
            };
            passed.push((below, verdict));
        }
        if (rows.len() as i64) < PAGE {
            return Ok((None, passed));
        }
    }
}
