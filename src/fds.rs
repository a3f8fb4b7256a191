//! File descriptors. Every connection, pooled database socket and open file takes one, and a
//! process that runs out cannot accept an operator's call, open its checkpoint file or reach a
//! target. So at start sever raises its soft `RLIMIT_NOFILE` to the hard limit, sets aside
//! what the store, the target pools, the checkpoint file, outbound HTTP and a reserve need,
//! and sizes the listeners' connection caps to fit in the rest: connections past a cap wait
//! in the kernel's accept queue instead of taking the last descriptors.
//!
//! A leaf: it imports no other module of the crate. `config` fills in the [`Budget`]
//! (`Config::fd_budget`) and the configured caps (`ServerConfig::connection_caps`), and the
//! store sizes its pool from [`STORE_POOL`].

use std::fmt;

/// Descriptors kept for what is not counted on its own: standard streams and logs, the
/// runtime's epoll and wake-up descriptors, the listening sockets, SQLite's WAL and
/// shared-memory files, DNS lookups, TLS root stores, migrations, and the odd file read
/// while serving.
pub const RESERVE: u64 = 64;
/// The store's pool: the larger of its two backends' (PostgreSQL's, which the store sizes
/// to this; SQLite keeps one connection on the database file).
pub const STORE_POOL: u64 = 8;
/// Outbound HTTPS connections to Vault, AWS, SNS and notification channels, when any is
/// configured: their clients keep a few pooled connections per host, and a handful of
/// requests run at once.
pub const OUTBOUND_HTTP: u64 = 32;
/// `server.max_connections` when not configured, as far as the limit allows.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// `server.operator_max_connections` when not configured, as far as the limit allows.
pub const DEFAULT_OPERATOR_MAX_CONNECTIONS: usize = 64;
/// Connections served at once on `server.metrics_listen`: scrapers are few, and one more
/// waits in the accept queue. Set aside from the budget when that listener is configured.
pub const METRICS_MAX_CONNECTIONS: usize = 8;

/// Why the listeners' connection caps cannot be set.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    /// The open-file limit could not be read.
    #[error("cannot read the open-file limit (RLIMIT_NOFILE): {0}")]
    Limit(#[source] std::io::Error),
    /// The configured caps, or the other uses of descriptors, do not fit under the limit.
    #[error(
        "{what} cannot fit under the open-file limit: {budget}; raise the hard limit \
         (LimitNOFILE= in a systemd unit, `ulimit -Hn`, the container's nofile ulimit) or {lower}"
    )]
    DoesNotFit {
        /// The setting or settings that need more than is left.
        what: String,
        /// Where the descriptors go.
        budget: Budget,
        /// What the operator can lower instead.
        lower: &'static str,
    },
}

/// Raises the soft open-file limit to the hard limit and returns the limit now in force.
/// Failing to raise it is logged and the current limit used: sizing still keeps within it.
#[cfg(unix)]
pub fn raise_limit() -> Result<u64, FdError> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Ok(limit),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit to its hard limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .map_err(FdError::Limit)
        }
    }
}

/// Without `RLIMIT_NOFILE` there is no such limit to keep within.
#[cfg(not(unix))]
pub fn raise_limit() -> Result<u64, FdError> {
    Ok(u64::MAX)
}

/// Where the descriptors under the open-file limit go, apart from the listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft `RLIMIT_NOFILE` in force.
    pub limit: u64,
    /// [`RESERVE`].
    pub reserve: u64,
    /// [`STORE_POOL`].
    pub store: u64,
    /// The sum of `targets.<id>.pool_size`, plus one per target with `locks = true`.
    pub targets: u64,
    /// 1 when `audit.checkpoint_file` is set: it is opened for each checkpoint.
    pub checkpoint_file: u64,
    /// [`OUTBOUND_HTTP`] when Vault, AWS or a notification channel is used, plus one per Vault
    /// event subscription.
    pub outbound: u64,
}

impl Budget {
    /// Descriptors left for the listeners' connections.
    pub fn for_connections(&self) -> usize {
        let used = self.reserve + self.store + self.targets + self.checkpoint_file + self.outbound;
        usize::try_from(self.limit.saturating_sub(used)).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "of {} descriptors, {} are reserved, {} go to the store pool, {} to target pools, \
             {} to the checkpoint file and {} to outbound HTTP, leaving {} for connections",
            self.limit,
            self.reserve,
            self.store,
            self.targets,
            self.checkpoint_file,
            self.outbound,
            self.for_connections()
        )
    }
}

/// The connection caps as configured (`server.max_connections`,
/// `server.operator_max_connections`); `None` lets them be sized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfiguredCaps {
    /// `server.max_connections`.
    pub max_connections: Option<usize>,
    /// `server.operator_max_connections`.
    pub operator_max_connections: Option<usize>,
}

/// The connection caps chosen for the listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// The intake listener's (or the only listener's).
    pub intake: usize,
    /// The operator listener's, when there is one.
    pub operator: Option<usize>,
}

/// Sizes the caps of the intake listener and, with `operator`, of a separate operator
/// listener. Configured caps are kept or refused; defaults shrink to what is left, the
/// operator listener keeping at least a quarter of it.
pub fn size_caps(server: &ConfiguredCaps, operator: bool, budget: Budget) -> Result<Caps, FdError> {
    let left = budget.for_connections();
    let does_not_fit = |what: String, lower| FdError::DoesNotFit {
        what,
        budget,
        lower,
    };
    const LOWER_INTAKE: &str = "lower server.max_connections";
    const LOWER_BOTH: &str = "lower server.max_connections or server.operator_max_connections";
    const LOWER_POOLS: &str = "lower targets.<id>.pool_size";
    if !operator {
        let intake = match server.max_connections {
            Some(n) if n > left => {
                return Err(does_not_fit(
                    format!("server.max_connections = {n}"),
                    LOWER_INTAKE,
                ));
            }
            Some(n) => n,
            None if left == 0 => {
                return Err(does_not_fit("the listener".into(), LOWER_POOLS));
            }
            None => DEFAULT_MAX_CONNECTIONS.min(left),
        };
        return Ok(Caps {
            intake,
            operator: None,
        });
    }
    let (intake, operator) = match (server.max_connections, server.operator_max_connections) {
        (Some(i), Some(o)) if i.saturating_add(o) > left => {
            return Err(does_not_fit(
                format!("server.max_connections = {i} with server.operator_max_connections = {o}"),
                LOWER_BOTH,
            ));
        }
        (Some(i), Some(o)) => (i, o),
        (Some(i), None) if i >= left => {
            return Err(does_not_fit(
                format!("server.max_connections = {i} with the operator listener"),
                LOWER_INTAKE,
            ));
        }
        (Some(i), None) => (i, DEFAULT_OPERATOR_MAX_CONNECTIONS.min(left - i)),
        (None, Some(o)) if o >= left => {
            return Err(does_not_fit(
                format!("server.operator_max_connections = {o} with the intake listener"),
                "lower server.operator_max_connections",
            ));
        }
        (None, Some(o)) => (DEFAULT_MAX_CONNECTIONS.min(left - o), o),
        (None, None) if left < 2 => {
            return Err(does_not_fit("the two listeners".into(), LOWER_POOLS));
        }
        (None, None) => {
            let o = DEFAULT_OPERATOR_MAX_CONNECTIONS.min((left / 4).max(1));
            (DEFAULT_MAX_CONNECTIONS.min(left - o), o)
        }
    };
    Ok(Caps {
        intake,
        operator: Some(operator),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64) -> Budget {
        Budget {
            limit,
            reserve: RESERVE,
            store: STORE_POOL,
            targets: 4,
            checkpoint_file: 1,
            outbound: 0,
        }
    }

    fn server(intake: Option<usize>, operator: Option<usize>) -> ConfiguredCaps {
        ConfiguredCaps {
            max_connections: intake,
            operator_max_connections: operator,
        }
    }

    #[test]
    fn the_budget_counts_every_other_use() {
        let b = budget(1024);
        assert_eq!(b.for_connections(), 1024 - 64 - 8 - 4 - 1);
        assert_eq!(budget(10).for_connections(), 0);
        let text = b.to_string();
        assert!(
            text.contains("of 1024 descriptors") && text.contains("leaving 947"),
            "{text}"
        );
    }

    #[test]
    fn defaults_shrink_to_fit() {
        // Plenty: the defaults as they are.
        let caps = size_caps(&server(None, None), true, budget(65536)).unwrap();
        assert_eq!(caps.intake, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(caps.operator, Some(DEFAULT_OPERATOR_MAX_CONNECTIONS));
        // systemd's 1024: both shrink into the 947 left, and the operators keep their share.
        let caps = size_caps(&server(None, None), true, budget(1024)).unwrap();
        assert_eq!(caps.operator, Some(64));
        assert_eq!(caps.intake, 947 - 64);
        let caps = size_caps(&server(None, None), false, budget(1024)).unwrap();
        assert_eq!(
            caps,
            Caps {
                intake: 947,
                operator: None
            }
        );
        // Very little: a quarter for the operators.
        let caps = size_caps(&server(None, None), true, budget(117)).unwrap();
        assert_eq!(
            caps,
            Caps {
                intake: 30,
                operator: Some(10)
            }
        );
        // One configured, the other takes what is left.
        let caps = size_caps(&server(Some(900), None), true, budget(1024)).unwrap();
        assert_eq!(
            caps,
            Caps {
                intake: 900,
                operator: Some(47)
            }
        );
        let caps = size_caps(&server(None, Some(100)), true, budget(1024)).unwrap();
        assert_eq!(
            caps,
            Caps {
                intake: 847,
                operator: Some(100)
            }
        );
    }

    #[test]
    fn configured_caps_that_cannot_fit_are_refused() {
        let refused = |s: ConfiguredCaps, operator: bool, limit: u64| {
            size_caps(&s, operator, budget(limit))
                .unwrap_err()
                .to_string()
        };
        let e = refused(server(Some(1024), None), false, 1024);
        assert!(
            e.starts_with("server.max_connections = 1024 cannot fit"),
            "{e}"
        );
        assert!(
            e.contains("leaving 947 for connections") && e.contains("LimitNOFILE"),
            "{e}"
        );
        let e = refused(server(Some(500), Some(500)), true, 1024);
        assert!(e.contains("server.operator_max_connections = 500"), "{e}");
        // A configured intake cap must leave the operator listener something.
        let e = refused(server(Some(947), None), true, 1024);
        assert!(e.contains("with the operator listener"), "{e}");
        let e = refused(server(None, Some(947)), true, 1024);
        assert!(e.contains("with the intake listener"), "{e}");
        // Nothing left at all, even for defaults.
        let e = refused(server(None, None), true, 70);
        assert!(e.contains("the two listeners cannot fit"), "{e}");
        // Exactly what is left fits.
        let caps = size_caps(&server(Some(947), None), false, budget(1024)).unwrap();
        assert_eq!(caps.intake, 947);
    }
}
