//! Self-test of the SQL Server (TDS 7.3) stand-in, driven by tiberius itself: logins, the
//! sys.dm_exec_sessions query contract (parameters, DECLAREd variables, literals, @@SPID),
//! KILL and its errors, the on_query hook and the recorded statements.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Duration, NaiveDate, Timelike, Utc};
use support::tds::{FakeSession, TdsStandIn, sql_datetime_precision};
use tiberius::time::{Date, DateTime2, Time};
use tiberius::{AuthMethod, Client, ColumnData, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

type Conn = Client<Compat<TcpStream>>;

const ADMIN: &str = "sever_admin";
const ADMIN_PW: &str = "s3cr3t-Pässword!";

const COLUMNS: &str = "session_id, original_login_name, login_name, login_time, host_name, \
                       program_name, database_name, client_net_address, status";

/// The query the engine is expected to send.
fn session_query() -> String {
    format!(
        "SELECT {COLUMNS} FROM sys.dm_exec_sessions \
         WHERE is_user_process = 1 AND original_login_name = @P1 AND login_time < @P2 \
         AND session_id <> @@SPID"
    )
}

async fn connect(port: u16, login: &str, password: &str) -> tiberius::Result<Conn> {
    let mut config = Config::new();
    config.host("127.0.0.1");
    config.port(port);
    config.authentication(AuthMethod::sql_server(login, password));
    config.encryption(EncryptionLevel::NotSupported);
    config.application_name("sever");
    config.trust_cert();
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp connect");
    tcp.set_nodelay(true).unwrap();
    Client::connect(config, tcp.compat_write()).await
}

async fn standin() -> TdsStandIn {
    let sql = TdsStandIn::start().await;
    sql.allow_login(ADMIN, ADMIN_PW);
    sql
}

fn session(id: i16, login: &str, login_time: DateTime<Utc>) -> FakeSession {
    FakeSession {
        session_id: id,
        original_login_name: login.to_string(),
        login_name: login.to_string(),
        login_time,
        host_name: Some(format!("host-{id}")),
        program_name: Some("psql-ish".to_string()),
        database_name: Some("appdb".to_string()),
        client_net_address: Some("10.0.0.7".to_string()),
        status: "sleeping".to_string(),
        is_user_process: true,
    }
}

/// A `datetime2(7)` parameter, as tiberius' `chrono` feature would send a `DateTime<Utc>`.
fn datetime2(t: DateTime<Utc>) -> ColumnData<'static> {
    let t = t.naive_utc();
    let days = (t.date() - NaiveDate::from_ymd_opt(1, 1, 1).unwrap()).num_days() as u32;
    let nanos =
        t.time().num_seconds_from_midnight() as u64 * 1_000_000_000 + t.time().nanosecond() as u64;
    ColumnData::DateTime2(Some(DateTime2::new(
        Date::new(days),
        Time::new(nanos / 100, 7),
    )))
}

/// Reads a `datetime` cell the way tiberius' `chrono` feature does.
fn read_datetime(row: &tiberius::Row, idx: usize) -> DateTime<Utc> {
    match row.get::<ColumnData<'_>, _>(idx) {
        Some(ColumnData::DateTime(Some(dt))) => {
            let base = NaiveDate::from_ymd_opt(1900, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap();
            (base
                + Duration::days(dt.days() as i64)
                + Duration::nanoseconds(dt.seconds_fragments() as i64 * 1_000_000_000 / 300))
            .and_utc()
        }
        other => panic!("column {idx} is not a datetime: {other:?}"),
    }
}

fn read_session(row: &tiberius::Row) -> FakeSession {
    let opt = |i: usize| row.get::<&str, _>(i).map(str::to_string);
    FakeSession {
        session_id: row.get::<i16, _>(0).unwrap(),
        original_login_name: row.get::<&str, _>(1).unwrap().to_string(),
        login_name: row.get::<&str, _>(2).unwrap().to_string(),
        login_time: read_datetime(row, 3),
        host_name: opt(4),
        program_name: opt(5),
        database_name: opt(6),
        client_net_address: opt(7),
        status: row.get::<&str, _>(8).unwrap().to_string(),
        is_user_process: true,
    }
}

fn server_code(e: &tiberius::error::Error) -> u32 {
    match e {
        tiberius::error::Error::Server(t) => t.code(),
        other => panic!("expected a server error, got {other:?}"),
    }
}

async fn query_sessions(
    client: &mut Conn,
    sql: &str,
    params: &[&dyn tiberius::ToSql],
) -> tiberius::Result<Vec<FakeSession>> {
    let rows = client.query(sql, params).await?.into_first_result().await?;
    Ok(rows.iter().map(read_session).collect())
}

async fn my_spid(client: &mut Conn) -> i16 {
    let row = client
        .simple_query("SELECT @@SPID")
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    row.get::<i16, _>(0).unwrap()
}

#[tokio::test]
async fn login_select_and_own_session() {
    let sql = standin().await;
    let mut client = connect(sql.port(), ADMIN, ADMIN_PW).await.expect("login");

    let row = client
        .simple_query("SELECT 1")
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<i32, _>(0), Some(1));

    let spid = my_spid(&mut client).await;
    assert_eq!(spid, 51);
    // Also readable as i32, and through sp_executesql.
    let row = client
        .query("SELECT @@SPID", &[])
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<i32, _>(0), Some(51));

    let sessions = sql.sessions();
    assert_eq!(sessions.len(), 1);
    let own = &sessions[0];
    assert_eq!(own.session_id, 51);
    assert_eq!(own.original_login_name, ADMIN);
    assert_eq!(own.login_name, ADMIN);
    assert_eq!(own.program_name.as_deref(), Some("sever"));
    assert_eq!(own.database_name.as_deref(), Some("master"));
    assert_eq!(own.client_net_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(own.status, "sleeping");
    assert!(own.is_user_process);
    assert!((Utc::now() - own.login_time).num_seconds() < 30);

    // A second connection gets the next id; closing it removes its row.
    let mut second = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();
    assert_eq!(my_spid(&mut second).await, 52);
    assert_eq!(sql.sessions().len(), 2);
    second.close().await.unwrap();
    for _ in 0..100 {
        if sql.sessions().len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        sql.sessions()
            .iter()
            .map(|s| s.session_id)
            .collect::<Vec<_>>(),
        [51]
    );

    assert_eq!(
        sql.statements(),
        [
            "SELECT 1",
            "SELECT @@SPID",
            "sp_executesql: SELECT @@SPID",
            "SELECT @@SPID"
        ]
    );
}

/// Connects and expects the login to be refused.
async fn login_error(port: u16, login: &str, password: &str) -> tiberius::error::Error {
    match connect(port, login, password).await {
        Ok(_) => panic!("login {login} must fail"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn wrong_credentials_get_18456() {
    let sql = standin().await;
    let err = login_error(sql.port(), ADMIN, "wrong").await;
    assert_eq!(server_code(&err), 18456);
    match &err {
        tiberius::error::Error::Server(e) => {
            assert_eq!(e.message(), "Login failed for user 'sever_admin'.");
            assert_eq!(e.class(), 14);
        }
        _ => unreachable!(),
    }

    let err = login_error(sql.port(), "nobody", ADMIN_PW).await;
    assert_eq!(server_code(&err), 18456);

    // Login names are case-insensitive, passwords are not.
    let mut client = connect(sql.port(), "SEVER_ADMIN", ADMIN_PW).await.unwrap();
    assert_eq!(my_spid(&mut client).await, 51);
    assert_eq!(sql.sessions()[0].original_login_name, ADMIN);
    let err = login_error(sql.port(), ADMIN, &ADMIN_PW.to_uppercase()).await;
    assert_eq!(server_code(&err), 18456);
    assert_eq!(sql.statements(), ["SELECT @@SPID"]);
}

#[tokio::test]
async fn session_query_applies_the_where_clause() {
    let sql = standin().await;
    let now = Utc::now();
    let cutoff = now - Duration::hours(1);
    let old = now - Duration::hours(2) + Duration::microseconds(123_457);
    sql.add_session(session(60, "app", old));
    sql.add_session(session(61, "app", now - Duration::minutes(5))); // after the cutoff
    sql.add_session(session(62, "other", old)); // another login
    sql.add_session(FakeSession {
        is_user_process: false,
        ..session(63, "app", old)
    });
    sql.add_session(FakeSession {
        host_name: None,
        program_name: None,
        database_name: None,
        client_net_address: None,
        status: "running".to_string(),
        ..session(65, "APP", old - Duration::hours(3)) // case-insensitive match
    });

    let mut client = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();
    let got = query_sessions(&mut client, &session_query(), &[&"app", &datetime2(cutoff)])
        .await
        .unwrap();
    let ids: Vec<i16> = got.iter().map(|s| s.session_id).collect();
    assert_eq!(ids, [60, 65]);
    // Columns and types round-trip; login_time is a datetime (1/300 s).
    let mut expected = session(60, "app", sql_datetime_precision(old));
    assert_eq!(got[0], expected);
    assert_ne!(got[0].login_time, old);
    assert!((got[0].login_time - old).num_milliseconds().abs() <= 2);
    expected = FakeSession {
        host_name: None,
        program_name: None,
        database_name: None,
        client_net_address: None,
        status: "running".to_string(),
        ..session(65, "APP", sql_datetime_precision(old - Duration::hours(3)))
    };
    assert_eq!(got[1], expected);

    // Column metadata: names and SQL types.
    let mut stream = client
        .query(session_query(), &[&"app", &datetime2(cutoff)])
        .await
        .unwrap();
    let columns: Vec<String> = stream
        .columns()
        .await
        .unwrap()
        .unwrap()
        .iter()
        .map(|c| format!("{} {:?}", c.name(), c.column_type()))
        .collect();
    assert_eq!(
        columns,
        [
            "session_id Int2",
            "original_login_name NVarchar",
            "login_name NVarchar",
            "login_time Datetimen",
            "host_name NVarchar",
            "program_name NVarchar",
            "database_name NVarchar",
            "client_net_address NVarchar",
            "status NVarchar"
        ]
    );
    drop(stream);

    // Without is_user_process = 1 the system session comes back too.
    let sql_text = format!(
        "SELECT {COLUMNS} FROM sys.dm_exec_sessions s \
         WHERE s.original_login_name = @P1 AND s.login_time < @P2 ORDER BY s.session_id DESC"
    );
    let got = query_sessions(&mut client, &sql_text, &[&"app", &datetime2(cutoff)])
        .await
        .unwrap();
    let ids: Vec<i16> = got.iter().map(|s| s.session_id).collect();
    assert_eq!(ids, [65, 63, 60]);

    // The recorded statement carries the parameters (datetime2(7): 100 ns).
    let recorded = sql.statements();
    let sent = cutoff
        .naive_utc()
        .with_nanosecond(cutoff.nanosecond() / 100 * 100)
        .unwrap();
    assert_eq!(
        recorded[0],
        format!(
            "sp_executesql: {} | @P1='app' | @P2={}",
            session_query(),
            sent.format("%Y-%m-%dT%H:%M:%S%.fZ")
        )
    );
    assert_eq!(recorded.len(), 3);
}

#[tokio::test]
async fn session_query_variants() {
    let sql = standin().await;
    let t0 = Utc::now() - Duration::days(1);
    sql.add_session(session(70, "app", t0));
    sql.add_session(session(71, "app", t0 + Duration::hours(2)));
    let mut client = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();
    let cutoff = t0 + Duration::hours(1);

    // DECLAREd variables initialised from the parameters.
    let declared = format!(
        "DECLARE @login nvarchar(128) = @P1, @cutoff datetime2 = @P2;\n\
         SELECT {COLUMNS} FROM sys.dm_exec_sessions \
         WHERE original_login_name = @login AND login_time < @cutoff AND session_id <> @@SPID"
    );
    let got = query_sessions(&mut client, &declared, &[&"app", &datetime2(cutoff)])
        .await
        .unwrap();
    assert_eq!(got.iter().map(|s| s.session_id).collect::<Vec<_>>(), [70]);

    // The cutoff as a string: datetime accepts up to 3 fractional digits ...
    let as_text = cutoff
        .naive_utc()
        .format("%Y-%m-%dT%H:%M:%S%.3f")
        .to_string();
    let got = query_sessions(&mut client, &session_query(), &[&"app", &as_text.as_str()])
        .await
        .unwrap();
    assert_eq!(got.iter().map(|s| s.session_id).collect::<Vec<_>>(), [70]);
    // ... but not 7, nor a zone (error 241), unless DECLAREd datetime2 / datetimeoffset.
    let seven = format!(
        "{}.{:07}",
        cutoff.format("%Y-%m-%dT%H:%M:%S"),
        cutoff.nanosecond() / 100
    );
    let err = query_sessions(&mut client, &session_query(), &[&"app", &seven.as_str()])
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), 241);
    let rfc3339 = cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let err = query_sessions(&mut client, &session_query(), &[&"app", &rfc3339.as_str()])
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), 241);
    let got = query_sessions(&mut client, &declared, &[&"app", &seven.as_str()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let offset_declared = declared.replace("@cutoff datetime2", "@cutoff datetimeoffset");
    let got = query_sessions(&mut client, &offset_declared, &[&"app", &rfc3339.as_str()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);

    // Literals in a SQL batch, reversed operands, IS NULL, a session-id re-check.
    let batch = format!(
        "SELECT {COLUMNS} FROM sys.dm_exec_sessions WITH (NOLOCK) \
         WHERE N'app' = original_login_name AND (session_id = 71) AND host_name IS NOT NULL;"
    );
    let rows = client
        .simple_query(batch.as_str())
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<i16, _>(0), Some(71));
    let got = query_sessions(
        &mut client,
        &format!("SELECT {COLUMNS} FROM sys.dm_exec_sessions WHERE session_id = @P1"),
        &[&70i32],
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 1);

    // Undeclared variables (as SQL Server: tiberius only sends @P1, @P2, ...).
    let err = query_sessions(
        &mut client,
        &format!(
            "SELECT {COLUMNS} FROM sys.dm_exec_sessions \
             WHERE original_login_name = @login AND login_time < @cutoff"
        ),
        &[&"app", &datetime2(cutoff)],
    )
    .await
    .unwrap_err();
    assert_eq!(server_code(&err), 137);

    // Stand-in limitations are reported, not silently ignored.
    for unsupported in [
        "SELECT * FROM sys.dm_exec_sessions".to_string(),
        "SELECT session_id FROM sys.dm_exec_sessions".to_string(),
        format!(
            "SELECT {COLUMNS} FROM sys.dm_exec_sessions WHERE session_id = 1 OR session_id = 2"
        ),
        format!("SELECT {COLUMNS} FROM sys.dm_exec_sessions WHERE original_login_name LIKE 'a%'"),
        format!("SELECT {COLUMNS} FROM sys.dm_exec_sessions WHERE memory_usage > 0"),
    ] {
        let err = client.simple_query(unsupported.as_str()).await.unwrap_err();
        assert_eq!(server_code(&err), 50000, "{unsupported}: {err}");
    }

    // Many rows: the answer spans several TDS packets.
    for id in 100..400 {
        sql.add_session(session(id, "bulk", t0));
    }
    let got = query_sessions(
        &mut client,
        &format!("SELECT {COLUMNS} FROM sys.dm_exec_sessions WHERE login_name = @P1"),
        &[&"bulk"],
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 300);
    // And a request that spans several packets.
    let long = format!("{} -- {}", session_query(), "x".repeat(10_000));
    let got = query_sessions(&mut client, &long, &[&"bulk", &datetime2(Utc::now())])
        .await
        .unwrap();
    assert_eq!(got.len(), 300);
}

#[tokio::test]
async fn own_session_is_excluded_only_when_asked() {
    let sql = standin().await;
    sql.allow_login("app", "app-pw");
    let mut me = connect(sql.port(), "app", "app-pw").await.unwrap();
    let mut other = connect(sql.port(), "app", "app-pw").await.unwrap();
    let me_id = my_spid(&mut me).await;
    let other_id = my_spid(&mut other).await;
    let future = datetime2(Utc::now() + Duration::hours(1));

    let got = query_sessions(&mut me, &session_query(), &[&"app", &future])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].session_id, other_id);
    assert_eq!(got[0].program_name.as_deref(), Some("sever"));
    assert_eq!(got[0].status, "sleeping");

    let without = session_query().replace(" AND session_id <> @@SPID", "");
    let got = query_sessions(&mut me, &without, &[&"app", &future])
        .await
        .unwrap();
    let mut ids: Vec<i16> = got.iter().map(|s| s.session_id).collect();
    ids.sort();
    assert_eq!(ids, [me_id, other_id]);
    // The requesting session is running while it executes.
    let mine = got.iter().find(|s| s.session_id == me_id).unwrap();
    assert_eq!(mine.status, "running");
}

#[tokio::test]
async fn kill_and_its_errors() {
    let sql = standin().await;
    let old = Utc::now() - Duration::hours(3);
    sql.add_session(session(60, "app", old));
    sql.add_session(FakeSession {
        is_user_process: false,
        ..session(61, "app", old)
    });
    sql.add_session(FakeSession {
        status: "rollback".to_string(),
        ..session(62, "app", old)
    });
    let mut client = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();
    let me = my_spid(&mut client).await;

    client.simple_query("KILL 60").await.unwrap();
    assert!(sql.sessions().iter().all(|s| s.session_id != 60));

    let err = client.simple_query("KILL 60").await.unwrap_err();
    assert_eq!(server_code(&err), 6106);
    assert!(
        err.to_string()
            .contains("Process ID 60 is not an active process ID.")
    );

    let err = client
        .simple_query(format!("KILL {me};"))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), 6104);
    assert!(
        err.to_string()
            .contains("Cannot use KILL to kill your own process.")
    );

    let err = client.simple_query("KILL 61").await.unwrap_err();
    assert_eq!(server_code(&err), 6107);

    let err = client.simple_query("KILL 0").await.unwrap_err();
    assert_eq!(server_code(&err), 6101);

    // Rolling back: an informational message only; the session stays.
    client.simple_query("KILL 62").await.unwrap();
    assert!(sql.sessions().iter().any(|s| s.session_id == 62));

    sql.deny_kill(true);
    let err = client.simple_query("KILL 62").await.unwrap_err();
    assert_eq!(server_code(&err), 6102);
    match &err {
        tiberius::error::Error::Server(e) => {
            assert_eq!(e.class(), 14);
            assert_eq!(
                e.message(),
                "User does not have permission to use the KILL statement."
            );
        }
        _ => unreachable!(),
    }
    sql.deny_kill(false);

    // KILL takes a literal only; anything else is a syntax error.
    let err = client.query("KILL @P1", &[&62i32]).await.unwrap_err();
    assert_eq!(server_code(&err), 102);
    let err = client.simple_query("KILL sixty").await.unwrap_err();
    assert_eq!(server_code(&err), 102);
    let err = client.simple_query("DROP TABLE x").await.unwrap_err();
    assert_eq!(server_code(&err), 102);
    // Through sp_executesql with a literal, KILL works.
    sql.add_session(session(64, "app", old));
    client.execute("KILL 64", &[]).await.unwrap();
    assert!(sql.sessions().iter().all(|s| s.session_id != 64));

    // The connection is still usable after all those errors.
    assert_eq!(my_spid(&mut client).await, me);

    assert_eq!(
        sql.statements(),
        [
            "SELECT @@SPID".to_string(),
            "KILL 60".to_string(),
            "KILL 60".to_string(),
            format!("KILL {me};"),
            "KILL 61".to_string(),
            "KILL 0".to_string(),
            "KILL 62".to_string(),
            "KILL 62".to_string(),
            "sp_executesql: KILL @P1 | @P1=62".to_string(),
            "KILL sixty".to_string(),
            "DROP TABLE x".to_string(),
            "sp_executesql: KILL 64".to_string(),
            "SELECT @@SPID".to_string(),
        ]
    );
}

#[tokio::test]
async fn kill_closes_a_live_connection() {
    let sql = standin().await;
    sql.allow_login("app", "app-pw");
    let mut victim = connect(sql.port(), "app", "app-pw").await.unwrap();
    let victim_id = my_spid(&mut victim).await;
    let mut admin = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();

    admin
        .simple_query(format!("KILL {victim_id}"))
        .await
        .unwrap();
    assert!(sql.sessions().iter().all(|s| s.session_id != victim_id));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(victim.simple_query("SELECT 1").await.is_err());
}

#[tokio::test]
async fn on_query_hook_replaces_the_table_for_one_query() {
    let sql = standin().await;
    let old = Utc::now() - Duration::hours(3);
    sql.add_session(session(60, "app", old));
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    sql.on_query(Box::new(move |stmt, table| {
        assert!(stmt.starts_with("sp_executesql: SELECT"), "{stmt}");
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            None
        } else {
            // The second time, session 60 was reused by a fresh login.
            let mut rows = table.to_vec();
            for row in rows.iter_mut().filter(|s| s.session_id == 60) {
                row.login_time = Utc::now();
            }
            Some(rows)
        }
    }));
    let mut client = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();
    let cutoff = datetime2(Utc::now() - Duration::hours(1));
    let first = query_sessions(&mut client, &session_query(), &[&"app", &cutoff])
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let recheck = format!("{} AND session_id = @P3", session_query());
    let second = query_sessions(&mut client, &recheck, &[&"app", &cutoff, &60i16])
        .await
        .unwrap();
    assert!(
        second.is_empty(),
        "the WHERE clause applies to the hook's rows: {second:?} {:?}",
        sql.statements()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The table itself is unchanged.
    assert_eq!(sql.sessions()[1].login_time, old);
    assert!(sql.statements()[1].ends_with(" | @P3=60"));
}
