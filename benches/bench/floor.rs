//! The floor a rotation is compared with: the least any client can do, one set-based
//! `pg_terminate_backend` statement over an already-open connection, then polls on the same
//! connection every 1 ms until the sessions are gone.

use std::time::{Duration, Instant};

use sqlx::PgConnection;

use crate::servers::count_sessions;

/// Terminates every session of `login` over `conn` and waits until they are gone; returns
/// how long that took.
pub async fn terminate(conn: &mut PgConnection, login: &str) -> Duration {
    let t = Instant::now();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE usename = $1 AND backend_type = 'client backend'",
    )
    .bind(login)
    .execute(&mut *conn)
    .await
    .unwrap();
    while count_sessions(conn, login).await > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t.elapsed()
}
