//! sever's test kit: throwaway real servers (PostgreSQL, MariaDB, moto, OpenBao), the
//! stand-ins for what cannot run here (SQL Server over TDS, the Vault features OpenBao lacks),
//! a test CA, a stalling TCP proxy, a recording HTTP receiver (which can also hang), and the
//! small helpers they share.
//!
//! It knows nothing of sever and may not depend on it: it calls only the servers' own binaries
//! and their wire protocols. The tests that drive sever (`tests/it/`, `tests/secrets.rs`,
//! `tests/fdlimit.rs`, `tests/store_faults.rs`) build on it; its own self-tests are
//! `tests/kit/tests/selftest/`.

pub mod certs;
pub mod mariadb;
pub mod moto;
pub mod openbao;
pub mod pg;
pub mod proxy;
pub mod receiver;
pub mod tds;
pub mod util;
pub mod vault;

/// Installs the process-wide TLS crypto provider, the same choice sever makes
/// (`sever::install_crypto_provider`): without one, the first TLS connection panics.
pub fn install_crypto_provider() {
    // An Err only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
