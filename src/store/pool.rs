//! The store's connection pool on a store across a network: no ping before each statement
//! (a round trip on every one), instead a keeper that proves idle connections alive, and
//! statements and transactions that run again when their connection had died while idle.

use std::time::Duration;

use sqlx::{AnyConnection, Connection};
use tokio_util::sync::CancellationToken;

use super::{Backend, POSTGRES_POOL, Store};

/// How often [`Store::keep_warm`] proves a PostgreSQL store's idle connections alive.
pub const KEEP_WARM_EVERY: Duration = Duration::from_secs(10);

/// A PostgreSQL store connection idle longer than this is pinged before it is handed out.
pub(super) const STALE_AFTER: Duration = Duration::from_secs(30);

impl Store {
    /// Until `stop`, every `every` ([`KEEP_WARM_EVERY`] in the server), takes each idle
    /// connection of a PostgreSQL store out of the pool and gives it back, which makes sqlx
    /// ping it (closing it if it died: the store restarted, a NAT or load balancer dropped
    /// it while idle). Statements then run on connections proven alive seconds ago without
    /// a ping of their own, and a connection dropped by an idle timeout on the way (an AWS
    /// NLB's is 350 s) is replaced before a rotation needs it. One at a time, so the others
    /// stay idle for whoever needs one meanwhile.
    pub async fn keep_warm(self, every: Duration, stop: CancellationToken) {
        if self.backend != Backend::Postgres {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    // Handed back to the end of the idle queue, so each is taken once.
                    for _ in 0..self.pool.num_idle() {
                        match self.pool.try_acquire() {
                            Some(conn) => drop(conn),
                            None => break,
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }
}

/// Whether `e` says the connection was already dead when a statement was sent on it (the
/// server restarted or the network dropped it while idle), so running the statement again
/// on another connection is the same as running it once: a reset or closed socket, or the
/// server's `FATAL` for a connection it ended (SQLSTATE class 08, 57P01 to 57P03).
pub fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P0")),
        _ => false,
    }
}

/// Runs `statement` and, while its connection had died while idle ([`connection_lost`]),
/// again: sqlx has closed that connection, so the next run gets another (or a new one). At
/// most once per connection the pool can hold, plus one: after a store restart every idle
/// connection is dead. For the statements on a rotation's path that run outside a
/// transaction, which the pool no longer pings first. `statement` must be safe to run
/// twice: a read, or a write whose second run changes nothing more (a lost answer leaves at
/// most a lease to expire).
pub async fn again_if_lost<T, F, Fut>(mut statement: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut runs = 1;
    loop {
        match statement().await {
            Err(e) if connection_lost(&e) && runs <= POSTGRES_POOL => {
                tracing::debug!(error = %e, "a store connection had died while idle; running again");
                runs += 1;
            }
            other => return other,
        }
    }
}

/// Keeps a released connection only if its transaction ended cleanly. For SQLite the
/// rollback a dropped transaction queued runs in order before the ping returns, so the depth
/// read afterwards is final.
pub(super) async fn release_clean(conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    conn.ping().await?;
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::warn!(
            "a store connection's transaction could not be ended (its commit or rollback \
             failed); closing the connection"
        );
    }
    Ok(clean)
}
