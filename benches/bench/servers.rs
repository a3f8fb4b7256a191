//! The throwaway PostgreSQL clusters the scenarios run against, their sessions, and the
//! target entries and admin URLs sever and the floor reach them by.

use std::path::PathBuf;

use sever_testkit::pg::TestPostgres;
use sqlx::{PgConnection, Row};

/// sever_admin's password on every cluster.
pub const ADMIN_PASSWORD: &str = "severadminpw";
/// Sessions of other logins that must survive every rotation.
pub const BYSTANDERS: usize = 50;

/// A PostgreSQL cluster prepared for sever: more connections, sever's admin login.
pub async fn cluster() -> TestPostgres {
    let pg = TestPostgres::start();
    pg.exec("ALTER SYSTEM SET max_connections = 1200").await;
    pg.restart();
    pg.exec(&format!(
        "CREATE ROLE sever_admin LOGIN PASSWORD '{ADMIN_PASSWORD}' \
         IN ROLE pg_signal_backend, pg_read_all_stats"
    ))
    .await;
    pg
}

/// Opens `n` sessions as `login`, 50 at a time; they stay open while the Vec lives.
pub async fn open(pg: &TestPostgres, login: &str, n: usize) -> Vec<PgConnection> {
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        let batch = (n - conns.len()).min(50);
        let opened = futures_util::future::join_all(
            (0..batch).map(|_| pg.session(login, "pw", "postgres", "bench")),
        )
        .await;
        conns.extend(opened.into_iter().map(|(c, _)| c));
    }
    conns
}

pub async fn count_sessions(admin: &mut PgConnection, login: &str) -> i64 {
    sqlx::query(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE usename = $1 AND backend_type = 'client backend'",
    )
    .bind(login)
    .fetch_one(admin)
    .await
    .unwrap()
    .get("n")
}

pub fn target(id: &str, pg: &TestPostgres) -> String {
    target_via(id, pg, pg.port())
}

/// A target on `pg` that sever reaches through `port` (`pg`'s own, or a proxy's).
pub fn target_via(id: &str, pg: &TestPostgres, port: u16) -> String {
    format!(
        "[targets.{id}]\nengine = \"postgres\"\nurl = {{ file = {:?} }}\npool_size = 4\n",
        url_file(id, pg, port).display().to_string()
    )
}

/// The admin URL of `pg`, reached through `port`, in a file (sever refuses inline passwords).
pub fn url_file(id: &str, pg: &TestPostgres, port: u16) -> PathBuf {
    let path = pg.base_dir().join(format!("{id}.url"));
    std::fs::write(&path, admin_url(port)).unwrap();
    path
}

/// sever_admin's URL of a cluster reached through `port` (its own, or a proxy's).
pub fn admin_url(port: u16) -> String {
    format!("postgres://sever_admin:{ADMIN_PASSWORD}@127.0.0.1:{port}/postgres")
}

/// Opens `per_target` sessions of each of the first `k` targets' logins, on their clusters.
pub async fn open_per_target(
    clusters: &[TestPostgres],
    k: usize,
    per_target: usize,
) -> Vec<PgConnection> {
    let mut sessions = Vec::new();
    for j in 0..k {
        sessions.extend(open(&clusters[j % 4], &format!("app{j}"), per_target).await);
    }
    sessions
}
