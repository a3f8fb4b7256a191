//! sever: terminates the database sessions that outlive a credential rotation or revocation.
//!
//! Data flow: [`intake`] (HTTP, signed events and operator calls) → [`resolve`] (credential →
//! targets and logins) → [`terminate`] (per-engine session termination and verification) →
//! [`audit`] (hash-chained records). [`pipeline`] runs a plan through the last two.

pub mod audit;
pub mod config;
pub mod store;
