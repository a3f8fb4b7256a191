//! Keeping a login out (issue 19): whether a login may authenticate, as each engine records
//! it (its "gate"), closing it for a lock, and restoring exactly what was there before.
//!
//! The engine methods live on [`super::Engine`]; this module holds the vocabulary they
//! share with the lock store and the runner above. A gate is read and changed over the
//! target's lock connection (`targets.<id>.lock_url`, else `url`), only on targets with
//! `locks = true`.

use serde::{Deserialize, Serialize};

/// One account's part of a login's gate: PostgreSQL has one per role, MySQL/MariaDB one per
/// `'user'@'host'` account of the user, SQL Server one per login (or, for a contained
/// database user `db/user`, its `CONNECT` permission in that database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateAccount {
    /// The account as the engine names it (`app`, `'app'@'10.%'`, `orders/app`).
    pub account: String,
    /// Whether it may authenticate now (PostgreSQL `rolcanlogin`; MySQL/MariaDB not
    /// `ACCOUNT LOCK`ed; SQL Server not `DISABLE`d, or holding `CONNECT`).
    pub open: bool,
}

/// Whether a login may authenticate, account by account, as read from the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginGate {
    /// Every account of the login, in a stable order.
    pub accounts: Vec<GateAccount>,
}

impl LoginGate {
    /// The same accounts, all closed: what a lock leaves behind.
    pub fn closed(&self) -> LoginGate {
        LoginGate {
            accounts: self
                .accounts
                .iter()
                .map(|a| GateAccount {
                    account: a.account.clone(),
                    open: false,
                })
                .collect(),
        }
    }
}

/// What restoring a login's gate came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "restore", rename_all = "snake_case")]
pub enum Restored {
    /// The gate is as it was before the first lock again.
    Restored,
    /// The login no longer exists (dropped, e.g. by a Vault revocation): nothing to restore.
    Gone,
    /// Someone else changed the gate while it was locked: it is left as they made it, and
    /// reported, never overwritten.
    Changed {
        /// The gate as found.
        now: LoginGate,
    },
}
