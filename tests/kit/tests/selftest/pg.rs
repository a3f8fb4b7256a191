//! Checks the throwaway-PostgreSQL test harness in tests/kit/src/pg.rs itself.

use std::time::{Duration, Instant};

use sever_testkit::pg::TestPostgres;
use sqlx::Connection;

#[tokio::test]
async fn throwaway_postgres_lifecycle() {
    let t0 = Instant::now();
    let pg = TestPostgres::start();
    eprintln!(
        "TestPostgres::start() took {:?} (port {})",
        t0.elapsed(),
        pg.port()
    );

    assert_ne!(pg.port(), 5432, "must not use the system server's port");
    let base = pg.base_dir().to_path_buf();
    assert!(base.exists());

    pg.create_login("alice", "s3cretpw").await;
    assert_eq!(
        pg.url("alice", "s3cretpw", "postgres"),
        format!("postgres://alice:s3cretpw@127.0.0.1:{}/postgres", pg.port())
    );

    // A real password-authenticated session, tagged with application_name.
    let (mut conn, pid) = pg
        .session("alice", "s3cretpw", "postgres", "selftest-app")
        .await;
    assert!(pid > 0);
    assert!(
        pg.is_alive(pid).await,
        "fresh session must be in pg_stat_activity"
    );
    let (user, app): (String, String) =
        sqlx::query_as("SELECT current_user::text, current_setting('application_name')")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(user, "alice");
    assert_eq!(app, "selftest-app");

    // The URL form works too, and a wrong password is refused (scram over TCP).
    let via_url = sqlx::PgConnection::connect(&pg.url("alice", "s3cretpw", "postgres"))
        .await
        .expect("connect via url()");
    via_url.close().await.unwrap();
    assert!(
        sqlx::PgConnection::connect(&pg.url("alice", "wrong", "postgres"))
            .await
            .is_err(),
        "wrong password must be rejected"
    );
    let su = sqlx::PgConnection::connect(&pg.superuser_url("postgres"))
        .await
        .expect("connect via superuser_url()");
    su.close().await.unwrap();

    conn.close().await.unwrap();
    assert!(
        pg.wait_gone(pid, Duration::from_secs(5)).await,
        "closed session must disappear"
    );

    // Stop (twice: idempotent), restart on the same port, connect again.
    let port = pg.port();
    pg.stop();
    pg.stop();
    assert!(
        sqlx::PgConnection::connect(&pg.superuser_url("postgres"))
            .await
            .is_err(),
        "stopped server must refuse connections"
    );
    let t1 = Instant::now();
    pg.restart();
    eprintln!("TestPostgres::restart() took {:?}", t1.elapsed());
    assert_eq!(pg.port(), port);
    let (conn2, pid2) = pg.session("alice", "s3cretpw", "postgres", "").await;
    assert!(pg.is_alive(pid2).await);
    conn2.close().await.unwrap();

    let t2 = Instant::now();
    drop(pg);
    eprintln!("drop(TestPostgres) took {:?}", t2.elapsed());
    assert!(
        !base.exists(),
        "temp dir {} must be removed on drop",
        base.display()
    );
}
