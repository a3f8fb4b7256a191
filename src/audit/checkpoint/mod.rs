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
//!
//! With a key, an unkeyed checkpoint (which anyone can compute) counts only up to the one the
//! operator pinned in `audit.unkeyed_checkpoints_through`: the store never decides what was
//! written "before the key". The writer chains only onto checkpoints that pass these rules.
//!
//! Rooms: `key` (MACs and the key), `writer` (the periodic writer), `verify` (checking
//! the stored checkpoints and the checkpoint file against the trail). May call `store` and
//! `config`, and the rest of `audit`.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use super::read::column;

pub use key::{CheckpointKey, KEYED, UNKEYED};
pub use verify::{CheckpointProblem, CheckpointReport, VerifyOptions};
pub use writer::{ChainHealth, Writer, Written, checkpoint_writer};

/// The stored columns, in one place for every statement (sqlx wants static SQL text).
macro_rules! checkpoint_columns {
    () => {
        "idx, at, head_seq, head_hash, prev_mac, alg, mac"
    };
}

/// One checkpoint, as stored and as written to the checkpoint file (one JSON line each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// A stored checkpoint, or in words why its row does not have the schema's types.
fn decode(row: &AnyRow) -> Result<Checkpoint, String> {
    Ok(Checkpoint {
        index: column(row, "idx")?,
        at: column(row, "at")?,
        head_seq: column(row, "head_seq")?,
        head_hash: column(row, "head_hash")?,
        prev_mac: column(row, "prev_mac")?,
        alg: column(row, "alg")?,
        mac: column(row, "mac")?,
    })
}

// Declared after `checkpoint_columns!`, which they use.
mod key;
#[cfg(test)]
mod tests;
mod verify;
mod writer;
