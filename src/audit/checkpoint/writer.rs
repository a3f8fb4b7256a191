//! Writing checkpoints: the server's periodic writer and `sever audit checkpoint`.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::{Checkpoint, CheckpointKey, begin_chain_tx, decode};
use crate::audit::{Audit, AuditError, CheckpointFileHealth, GENESIS};
use crate::config::{AuditConfig, ConfigError};
use crate::context::{Context, ContextError};
use crate::store::timestamp;

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
}
