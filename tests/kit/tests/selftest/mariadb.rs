//! Checks the throwaway-MariaDB test harness in tests/kit/src/mariadb.rs itself.

use std::time::{Duration, Instant};

use sever_testkit::mariadb::TestMariaDb;
use sqlx::Connection;
use sqlx::mysql::{MySqlConnection, MySqlDatabaseError};

async fn uptime(conn: &mut MySqlConnection) -> u64 {
    let (_, v): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Uptime'")
        .fetch_one(conn)
        .await
        .expect("SHOW GLOBAL STATUS LIKE 'Uptime'");
    v.parse().expect("Uptime is a number")
}

async fn current_user(conn: &mut MySqlConnection) -> String {
    sqlx::query_scalar("SELECT CURRENT_USER()")
        .fetch_one(conn)
        .await
        .expect("SELECT CURRENT_USER()")
}

#[tokio::test]
async fn throwaway_mariadb_lifecycle() {
    let t0 = Instant::now();
    let db = TestMariaDb::start();
    eprintln!(
        "TestMariaDb::start() took {:?} (port {})",
        t0.elapsed(),
        db.port()
    );
    assert_ne!(db.port(), 3306, "must not use the system server's port");
    let base = db.base_dir().to_path_buf();
    assert!(base.exists());
    assert!(db.log_contents().contains("ready for connections"));

    // root over TCP, via the URL form.
    assert_eq!(
        db.root_url(),
        format!("mysql://root@127.0.0.1:{}/", db.port())
    );
    let mut root = MySqlConnection::connect(&db.root_url())
        .await
        .expect("connect via root_url()");
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&mut root)
        .await
        .unwrap();
    eprintln!(
        "server version {version}, root is {}",
        current_user(&mut root).await
    );

    // The columns of information_schema.PROCESSLIST on this server.
    let cols: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR) \
         FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = 'information_schema' AND TABLE_NAME = 'PROCESSLIST' \
         ORDER BY ORDINAL_POSITION",
    )
    .fetch_all(&mut root)
    .await
    .unwrap();
    eprintln!("information_schema.PROCESSLIST columns: {cols:?}");
    for want in [
        "ID", "USER", "HOST", "DB", "COMMAND", "TIME", "STATE", "INFO",
    ] {
        assert!(
            cols.iter().any(|(name, _)| name == want),
            "PROCESSLIST lacks {want}"
        );
    }

    // Two accounts for the same user name: the more specific host wins.
    db.create_account("app", "%", "pa").await;
    db.create_account("app", "127.0.0.1", "pb").await;
    assert_eq!(
        db.url("app", "pb"),
        format!("mysql://app:pb@127.0.0.1:{}/", db.port())
    );
    assert_eq!(
        db.url("a@b", "p:w/d"),
        format!("mysql://a%40b:p%3Aw%2Fd@127.0.0.1:{}/", db.port())
    );

    let (mut s1, id1) = db.session("app", "pb").await;
    assert_eq!(current_user(&mut s1).await, "app@127.0.0.1");
    let login: String = sqlx::query_scalar("SELECT USER()")
        .fetch_one(&mut s1)
        .await
        .unwrap();
    eprintln!("session with pb: CURRENT_USER()=app@127.0.0.1, USER()={login}, id {id1}");

    // 'app'@'127.0.0.1' sorts before 'app'@'%', so it is the only candidate for a client
    // at 127.0.0.1: its password (pb) is checked and pa is refused, with no fallback to '%'.
    let err = match db.try_session("app", "pa").await {
        Ok((_, id)) => panic!("pa must be refused, but got session {id}"),
        Err(e) => e,
    };
    eprintln!("session with pa: {err}");
    let number = err
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<MySqlDatabaseError>())
        .map(|e| e.number());
    assert_eq!(
        number,
        Some(1045),
        "expected ER_ACCESS_DENIED_ERROR, got {err}"
    );
    let via_url = MySqlConnection::connect(&db.url("app", "pb"))
        .await
        .expect("connect via url()");
    via_url.close().await.unwrap();

    // Leaked sessions stay open; ids rise.
    let ids = db.open_sessions("app", "pb", 3).await;
    assert_eq!(ids.len(), 3);
    assert!(ids[0] > id1, "ids rise: {id1} then {ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids rise: {ids:?}");
    for &id in &ids {
        assert!(db.is_alive(id).await, "session {id} must be in PROCESSLIST");
    }
    let rows: Vec<(u64, String, String, String)> = sqlx::query_as(
        "SELECT CAST(ID AS UNSIGNED), USER, HOST, COMMAND FROM information_schema.PROCESSLIST \
         WHERE USER = 'app' ORDER BY ID",
    )
    .fetch_all(&mut root)
    .await
    .unwrap();
    eprintln!("PROCESSLIST rows for app: {rows:?}");
    assert_eq!(rows.len(), 4, "s1 and the three leaked sessions");

    // KILL CONNECTION as root; the victim leaves the processlist, the others stay.
    db.exec(&format!("KILL CONNECTION {}", ids[0])).await;
    assert!(db.wait_gone(ids[0], Duration::from_secs(10)).await);
    assert!(db.is_alive(ids[1]).await && db.is_alive(ids[2]).await);
    db.exec(&format!("KILL CONNECTION {id1}")).await;
    assert!(db.wait_gone(id1, Duration::from_secs(10)).await);
    assert!(
        sqlx::query("SELECT 1").execute(&mut s1).await.is_err(),
        "a killed session's next query fails"
    );
    drop(s1);
    assert!(!db.is_alive(u64::MAX >> 1).await);

    // Restart: ids start over and Uptime resets.
    let (_, before) = db.session("app", "pb").await;
    while uptime(&mut root).await < 2 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = root.close().await;
    let t1 = Instant::now();
    db.restart();
    eprintln!("TestMariaDb::restart() took {:?}", t1.elapsed());
    let (mut s2, after) = db.session("app", "pb").await;
    eprintln!("connection id before restart {before}, after {after}");
    assert!(after < before, "ids restart: {after} >= {before}");
    assert!(after <= 10, "a fresh server hands out small ids: {after}");
    assert_eq!(current_user(&mut s2).await, "app@127.0.0.1");
    let up = uptime(&mut s2).await;
    assert!(up <= 1, "Uptime after restart: {up}");
    drop(s2);

    let t2 = Instant::now();
    drop(db);
    eprintln!("drop took {:?}", t2.elapsed());
    assert!(
        !base.exists(),
        "temp dir {} must be removed",
        base.display()
    );
}

#[tokio::test]
async fn skip_name_resolve_shows_client_ip() {
    let db = TestMariaDb::start_with_args(&["--skip-name-resolve"]);
    db.create_account("app", "127.0.0.1", "pb").await;
    let (_s, id) = db.session("app", "pb").await;
    let mut root = db.root_connection().await;
    let host: String =
        sqlx::query_scalar("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = ?")
            .bind(id)
            .fetch_one(&mut root)
            .await
            .unwrap();
    eprintln!("PROCESSLIST.HOST with --skip-name-resolve: {host}");
    assert!(host.starts_with("127.0.0.1:"), "{host}");
    let base = db.base_dir().to_path_buf();
    drop(db);
    assert!(!base.exists());
}
