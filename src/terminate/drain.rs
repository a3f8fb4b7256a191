//! Keeping a database clear (issue 19): whether new connections may reach one database, as
//! each engine records it (its "gate"), closing it for a drain, and restoring exactly what
//! was there before.
//!
//! The engine methods live on [`super::Engine`]; this module holds the vocabulary they share
//! with the drain store and the runner above. A database's gate is read and changed over the
//! target's lock connection, only on targets with `locks = true`.

use serde::{Deserialize, Serialize};

/// A database's gate as the engine records it: PostgreSQL's `datconnlimit` (`-1`, `50`, …),
/// SQL Server's `user_access_desc` (`MULTI_USER`, …). Opaque above the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseGate {
    /// The setting, in the engine's words.
    pub setting: String,
}

/// What re-opening a database came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reopen", rename_all = "snake_case")]
pub enum Reopened {
    /// The gate is as it was before the first drain again.
    Restored,
    /// The database no longer exists: nothing to restore.
    Gone,
    /// Someone else changed the gate while it was drained: left as they made it, reported,
    /// never overwritten.
    Changed {
        /// The gate as found.
        now: DatabaseGate,
    },
}
