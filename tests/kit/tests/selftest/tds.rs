//! Self-test of the SQL Server (TDS 7.3) stand-in, driven by tiberius itself: logins, the
//! session query contract (sys.dm_exec_sessions LEFT JOIN sys.dm_exec_connections, with
//! parameters, DECLAREd variables, literals, @@SPID), the clock query and a server clock in a
//! non-UTC zone, KILL and its errors, the on_query hook and the recorded statements.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, NaiveDateTime, Timelike, Utc};
use sever_testkit::tds::{FakeSession, TdsStandIn, sql_datetime_precision};
use tiberius::time::{Date, DateTime2, Time};
use tiberius::{AuthMethod, Client, ColumnData, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

pub(crate) type Conn = Client<Compat<TcpStream>>;

pub(crate) const ADMIN: &str = "sever_admin";
pub(crate) const ADMIN_PW: &str = "s3cr3t-Pässword!";

/// The select list of the session query, as a real server accepts it.
const SELECT: &str = "s.session_id, s.original_login_name, s.login_name, s.login_time, \
                      s.host_name, s.program_name, DB_NAME(s.database_id) AS database_name, \
                      c.client_net_address, s.status";

const FROM: &str = "FROM sys.dm_exec_sessions AS s \
                    LEFT JOIN sys.dm_exec_connections AS c \
                    ON c.session_id = s.session_id AND c.parent_connection_id IS NULL";

/// The query the engine sends, verbatim (newlines and all).
const ENGINE_QUERY: &str = "SELECT s.session_id, s.original_login_name, s.login_name, s.login_time, s.host_name, s.program_name,
       DB_NAME(s.database_id) AS database_name, c.client_net_address, s.status
FROM sys.dm_exec_sessions AS s
LEFT JOIN sys.dm_exec_connections AS c ON c.session_id = s.session_id AND c.parent_connection_id IS NULL
WHERE s.is_user_process = 1 AND s.original_login_name = @P1 AND s.login_time < @P2 AND s.session_id <> @@SPID";

const CLOCK: &str = "SELECT DATEDIFF(minute, GETUTCDATE(), GETDATE()) AS offset_minutes";

/// `SELECT <select list> FROM <join> WHERE <predicates>`.
fn select_where(predicates: &str) -> String {
    format!("SELECT {SELECT} {FROM} WHERE {predicates}")
}

/// The engine's listing: user sessions plus `predicates` (each starting with ` AND`).
fn listing(predicates: &str) -> String {
    select_where(&format!("s.is_user_process = 1{predicates}"))
}

/// The engine's query on one line.
fn session_query() -> String {
    listing(" AND s.original_login_name = @P1 AND s.login_time < @P2 AND s.session_id <> @@SPID")
}

pub(crate) async fn connect(port: u16, login: &str, password: &str) -> tiberius::Result<Conn> {
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

pub(crate) async fn standin() -> TdsStandIn {
    let sql = TdsStandIn::start().await;
    sql.allow_login(ADMIN, ADMIN_PW);
    sql
}

pub(crate) fn session(id: i16, login: &str, login_time: DateTime<Utc>) -> FakeSession {
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
        authenticating_database: None,
        request: None,
        transaction_begin_time: None,
        last_request_start_time: None,
        last_request_end_time: None,
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
pub(crate) fn read_datetime(row: &tiberius::Row, idx: usize) -> DateTime<Utc> {
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
        authenticating_database: None,
        request: None,
        transaction_begin_time: None,
        last_request_start_time: None,
        last_request_end_time: None,
    }
}

pub(crate) fn server_code(e: &tiberius::error::Error) -> u32 {
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

pub(crate) async fn my_spid(client: &mut Conn) -> i16 {
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
    let got = query_sessions(&mut client, ENGINE_QUERY, &[&"app", &datetime2(cutoff)])
        .await
        .unwrap();
    let ids: Vec<i16> = got.iter().map(|s| s.session_id).collect();
    assert_eq!(ids, [60, 65]);
    // Columns and types round-trip; login_time is a datetime (1/300 s).
    let mut expected = session(60, "app", sql_datetime_precision(old));
    assert_eq!(got[0], expected);
    assert_ne!(got[0].login_time, old);
    assert!((got[0].login_time - old).num_milliseconds().abs() <= 2);
    // NULLs: DB_NAME of no database, and no connection for the LEFT JOIN to find.
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
        .query(ENGINE_QUERY, &[&"app", &datetime2(cutoff)])
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
        "{} ORDER BY s.session_id DESC",
        select_where("s.original_login_name = @P1 AND s.login_time < @P2")
    );
    let got = query_sessions(&mut client, &sql_text, &[&"app", &datetime2(cutoff)])
        .await
        .unwrap();
    let ids: Vec<i16> = got.iter().map(|s| s.session_id).collect();
    assert_eq!(ids, [65, 63, 60]);

    // The one-line form, with ORDER BY, as the engine appends it.
    let got = query_sessions(
        &mut client,
        &format!("{} ORDER BY s.session_id;", session_query()),
        &[&"app", &datetime2(cutoff)],
    )
    .await
    .unwrap();
    assert_eq!(
        got.iter().map(|s| s.session_id).collect::<Vec<_>>(),
        [60, 65]
    );

    // The recorded statement carries the parameters (datetime2(7): 100 ns, no zone).
    let recorded = sql.statements();
    let sent = cutoff
        .naive_utc()
        .with_nanosecond(cutoff.nanosecond() / 100 * 100)
        .unwrap();
    assert_eq!(
        recorded[0],
        format!(
            "sp_executesql: {ENGINE_QUERY} | @P1='app' | @P2={}",
            sent.format("%Y-%m-%dT%H:%M:%S%.f")
        )
    );
    assert_eq!(recorded.len(), 4);
}

#[tokio::test]
async fn session_query_variants() {
    let sql = standin().await;
    let t0 = Utc::now() - Duration::days(1);
    sql.add_session(session(70, "app", t0));
    sql.add_session(FakeSession {
        database_name: Some("other_db".to_string()),
        client_net_address: None,
        ..session(71, "app", t0 + Duration::hours(2))
    });
    let mut client = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();
    let cutoff = t0 + Duration::hours(1);
    let ids = |rows: &[FakeSession]| rows.iter().map(|s| s.session_id).collect::<Vec<_>>();

    // DECLAREd variables initialised from the parameters; keywords in any case, newlines,
    // no AS before the aliases, OUTER, table hints.
    let declared = "declare @login nvarchar(128) = @P1, @cutoff datetime2 = @P2;\n\
         select s.session_id, s.original_login_name, s.login_name, s.login_time, s.host_name,\n\
         s.program_name, db_name(s.database_id) database_name, c.client_net_address, s.status\n\
         from sys.dm_exec_sessions s with (nolock)\n\
         left outer join sys.dm_exec_connections c\n\
         on (c.parent_connection_id is null) and s.session_id = c.session_id\n\
         where s.original_login_name = @login and s.login_time < @cutoff \
         and s.session_id <> @@spid order by s.session_id";
    let got = query_sessions(&mut client, declared, &[&"app", &datetime2(cutoff)])
        .await
        .unwrap();
    assert_eq!(ids(&got), [70]);

    // Unaliased views, unqualified names where they are unambiguous, a parenthesised ON.
    let unaliased = "SELECT sys.dm_exec_sessions.session_id, original_login_name, login_name, \
                     login_time, host_name, program_name, DB_NAME(database_id) AS [database_name], \
                     client_net_address, dm_exec_sessions.status AS status \
                     FROM sys.dm_exec_sessions LEFT JOIN sys.dm_exec_connections \
                     ON (dm_exec_connections.session_id = dm_exec_sessions.session_id \
                     AND (parent_connection_id IS NULL)) \
                     WHERE is_user_process = 1 AND login_time < @P1";
    let got = query_sessions(&mut client, unaliased, &[&datetime2(cutoff)])
        .await
        .unwrap();
    assert_eq!(ids(&got), [70]);

    // The cutoff as a string: datetime accepts up to 3 fractional digits ...
    let as_text = cutoff
        .naive_utc()
        .format("%Y-%m-%dT%H:%M:%S%.3f")
        .to_string();
    let got = query_sessions(&mut client, &session_query(), &[&"app", &as_text.as_str()])
        .await
        .unwrap();
    assert_eq!(ids(&got), [70]);
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
    let got = query_sessions(&mut client, declared, &[&"app", &seven.as_str()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let offset_declared = declared.replace("@cutoff datetime2", "@cutoff datetimeoffset");
    let got = query_sessions(&mut client, &offset_declared, &[&"app", &rfc3339.as_str()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);

    // Literals in a SQL batch, reversed operands, parentheses, IS [NOT] NULL on both views,
    // DB_NAME in the WHERE clause.
    let batch = select_where(
        "N'app' = s.original_login_name AND (s.session_id = 71) AND s.host_name IS NOT NULL \
         AND c.client_net_address IS NULL AND c.session_id IS NULL \
         AND DB_NAME(s.database_id) = N'OTHER_DB';",
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
    assert_eq!(rows[0].get::<&str, _>(6), Some("other_db"));
    assert_eq!(rows[0].get::<&str, _>(7), None);
    let got = query_sessions(
        &mut client,
        &listing(" AND c.session_id = @P1 AND c.client_net_address = '10.0.0.7'"),
        &[&70i32],
    )
    .await
    .unwrap();
    assert_eq!(ids(&got), [70]);
    // ORDER BY a result column name (database_name is only that) and a NULL column.
    let got = query_sessions(
        &mut client,
        &format!(
            "{} ORDER BY database_name DESC",
            listing(" AND s.session_id <> @@SPID")
        ),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(ids(&got), [71, 70]);
    let got = query_sessions(
        &mut client,
        &format!(
            "{} ORDER BY c.client_net_address, s.session_id",
            listing(" AND s.session_id <> @@SPID")
        ),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(ids(&got), [71, 70], "NULLs sort first");

    // The re-check before KILL: the same login and one session id, no cutoff.
    let recheck = listing(" AND s.original_login_name = @P1 AND s.session_id = @P2");
    let got = query_sessions(&mut client, &recheck, &[&"app", &70i32])
        .await
        .unwrap();
    assert_eq!(ids(&got), [70]);
    let got = query_sessions(&mut client, &recheck, &[&"other", &70i32])
        .await
        .unwrap();
    assert!(got.is_empty());
    let got = query_sessions(
        &mut client,
        &format!("{} AND s.session_id = @P3", session_query()),
        &[&"app", &datetime2(Utc::now()), &71i32],
    )
    .await
    .unwrap();
    assert_eq!(ids(&got), [71]);

    // Undeclared variables (as SQL Server: tiberius only sends @P1, @P2, ...).
    let err = query_sessions(
        &mut client,
        &listing(" AND s.original_login_name = @login AND s.login_time < @cutoff"),
        &[&"app", &datetime2(cutoff)],
    )
    .await
    .unwrap_err();
    assert_eq!(server_code(&err), 137);

    // What a real server rejects, with its error numbers.
    let old_shape = "SELECT session_id, original_login_name, login_name, login_time, host_name, \
                     program_name, database_name, client_net_address, status \
                     FROM sys.dm_exec_sessions WHERE is_user_process = 1";
    for (rejected, code) in [
        // The view has database_id, not database_name; client_net_address is a connection's.
        (old_shape.to_string(), 207),
        (
            format!(
                "SELECT s.session_id, s.original_login_name, s.login_name, s.login_time, \
                 s.host_name, s.program_name, DB_NAME(s.database_id) AS database_name, \
                 s.client_net_address, s.status {FROM}"
            ),
            207,
        ),
        // The WHERE clause cannot see select-list aliases.
        (listing(" AND database_name = N'appdb'"), 207),
        // session_id is in both views.
        (listing(" AND session_id <> @@SPID"), 209),
        (listing(" AND x.status = N'sleeping'"), 4104),
        // Once aliased, a view is known by its alias only.
        (
            listing(" AND sys.dm_exec_sessions.status = N'sleeping'"),
            4104,
        ),
        (format!("SELECT {SELECT} FROM dm_exec_sessions AS s"), 208),
        // No join: c is not in the FROM clause.
        (
            format!("SELECT {SELECT} FROM sys.dm_exec_sessions AS s"),
            4104,
        ),
    ] {
        let err = client.simple_query(rejected.as_str()).await.unwrap_err();
        assert_eq!(server_code(&err), code, "{rejected}: {err}");
    }

    // Stand-in limitations are reported, not silently ignored.
    for unsupported in [
        format!("SELECT * {FROM}"),
        format!("SELECT s.session_id {FROM}"),
        "SELECT 2".to_string(),
        format!("SELECT TOP 1 {SELECT} {FROM}"),
        // The DB_NAME column needs its name.
        format!("SELECT {} {FROM}", SELECT.replace(" AS database_name", "")),
        format!(
            "SELECT {} {FROM}",
            SELECT.replace("AS database_name", "AS db")
        ),
        format!(
            "SELECT {} {FROM}",
            SELECT.replace("s.status", "s.status AS state")
        ),
        format!(
            "SELECT {} {FROM}",
            SELECT.replace("s.session_id,", "c.session_id,")
        ),
        // Without the parent filter a real server returns a row per MARS connection.
        format!(
            "SELECT {SELECT} FROM sys.dm_exec_sessions AS s \
             LEFT JOIN sys.dm_exec_connections AS c ON c.session_id = s.session_id"
        ),
        format!("SELECT {SELECT} {FROM} AND c.net_transport = 'TCP'"),
        format!(
            "SELECT {SELECT} FROM sys.dm_exec_sessions AS s \
             JOIN sys.dm_exec_connections AS c ON c.session_id = s.session_id \
             AND c.parent_connection_id IS NULL"
        ),
        format!("SELECT {SELECT} FROM sys.dm_exec_sessions AS s, sys.dm_exec_connections AS c"),
        select_where("s.session_id = 1 OR s.session_id = 2"),
        select_where("s.original_login_name LIKE 'a%'"),
        select_where("s.memory_usage > 0"),
        select_where("s.database_id = 5"),
        select_where("s.login_time < GETDATE()"),
        select_where("UPPER(s.login_name) = N'APP'"),
        select_where("s.login_name = s.original_login_name"),
        format!("{} ORDER BY 1", listing(" AND s.session_id <> @@SPID")),
        format!(
            "{} OPTION (RECOMPILE)",
            listing(" AND s.session_id <> @@SPID")
        ),
        "SELECT DATEDIFF(hour, GETUTCDATE(), GETDATE())".to_string(),
        "SELECT * FROM sys.dm_exec_connections".to_string(),
    ] {
        let err = client.simple_query(unsupported.as_str()).await.unwrap_err();
        assert_eq!(server_code(&err), 50000, "{unsupported}: {err}");
    }

    // Many rows: the answer spans several TDS packets.
    for id in 100..400 {
        sql.add_session(session(id, "bulk", t0));
    }
    let got = query_sessions(&mut client, &listing(" AND s.login_name = @P1"), &[&"bulk"])
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

    let got = query_sessions(&mut me, ENGINE_QUERY, &[&"app", &future])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].session_id, other_id);
    assert_eq!(got[0].program_name.as_deref(), Some("sever"));
    assert_eq!(got[0].database_name.as_deref(), Some("master"));
    assert_eq!(got[0].client_net_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(got[0].status, "sleeping");

    let without = session_query().replace(" AND s.session_id <> @@SPID", "");
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

/// Runs the clock query as a plain batch.
async fn clock(client: &mut Conn, sql: &str) -> i32 {
    let row = client
        .simple_query(sql)
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    row.get::<i32, _>(0).unwrap()
}

#[tokio::test]
async fn clock_query_and_a_server_clock_in_local_time() {
    let sql = standin().await;
    let cutoff = Utc::now() - Duration::hours(1);
    let before = cutoff - Duration::hours(2) + Duration::microseconds(123_457);
    let after = cutoff + Duration::minutes(30);
    sql.add_session(session(60, "app", before));
    sql.add_session(session(61, "app", after));
    let mut client = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();

    // Default: the server clock is UTC.
    assert_eq!(clock(&mut client, CLOCK).await, 0);
    let mut stream = client.simple_query(CLOCK).await.unwrap();
    let columns: Vec<String> = stream
        .columns()
        .await
        .unwrap()
        .unwrap()
        .iter()
        .map(|c| format!("{} {:?}", c.name(), c.column_type()))
        .collect();
    assert_eq!(columns, ["offset_minutes Int4"]);
    drop(stream);

    for offset in [-300i32, 330] {
        sql.set_utc_offset_minutes(offset);
        let shift = Duration::minutes(offset.into());
        assert_eq!(clock(&mut client, CLOCK).await, offset);
        assert_eq!(
            clock(
                &mut client,
                "select datediff(MINUTE, getutcdate(), getdate()) offset_minutes;"
            )
            .await,
            offset
        );
        assert_eq!(
            clock(
                &mut client,
                "SELECT DATEDIFF(mi, SYSDATETIME(), SYSUTCDATETIME())"
            )
            .await,
            -offset
        );
        // Through sp_executesql too.
        let row = client
            .query(CLOCK, &[])
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.get::<i32, _>("offset_minutes"), Some(offset));

        // The engine's way: the cutoff in the server's local time, a chrono NaiveDateTime.
        let cutoff_local: NaiveDateTime = cutoff.naive_utc() + shift;
        let rows = client
            .query(ENGINE_QUERY, &[&"app", &cutoff_local])
            .await
            .unwrap()
            .into_first_result()
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "offset {offset}");
        assert_eq!(rows[0].get::<i16, _>(0), Some(60));
        // login_time comes back in local time; minus the offset it is the UTC login time.
        let login_local = rows[0].get::<NaiveDateTime, _>(3).unwrap();
        assert_eq!(
            login_local,
            sql_datetime_precision(before).naive_utc() + shift
        );
        assert_eq!(
            (login_local - shift).and_utc(),
            sql_datetime_precision(before)
        );
        assert_eq!(
            sql.statements().last().unwrap(),
            &format!(
                "sp_executesql: {ENGINE_QUERY} | @P1='app' | @P2={}",
                cutoff_local
                    .with_nanosecond(cutoff_local.nanosecond() / 100 * 100)
                    .unwrap()
                    .format("%Y-%m-%dT%H:%M:%S%.f")
            )
        );

        // A UTC cutoff is compared as if it were local time, as on a real server: west of
        // UTC it catches a later session, east of it it misses the earlier one.
        let wrong = query_sessions(&mut client, ENGINE_QUERY, &[&"app", &cutoff.naive_utc()])
            .await
            .unwrap();
        let wrong: Vec<i16> = wrong.iter().map(|s| s.session_id).collect();
        let expected_wrong: &[i16] = if offset < 0 { &[60, 61] } else { &[] };
        assert_eq!(wrong, expected_wrong, "offset {offset}");
        // So is a datetimeoffset: SQL Server takes the datetime column as +00:00.
        let zoned: DateTime<FixedOffset> =
            cutoff.with_timezone(&FixedOffset::east_opt(offset * 60).unwrap());
        let wrong = query_sessions(&mut client, ENGINE_QUERY, &[&"app", &zoned])
            .await
            .unwrap();
        let wrong: Vec<i16> = wrong.iter().map(|s| s.session_id).collect();
        assert_eq!(wrong, expected_wrong, "offset {offset}");
        let recorded = sql.statements().last().unwrap().clone();
        let sign = if offset < 0 { '-' } else { '+' };
        let zone = format!("{sign}{:02}:{:02}", offset.abs() / 60, offset.abs() % 60);
        assert!(recorded.ends_with(&zone), "{recorded}");

        // The re-check compares the local login_time it read before.
        let recheck = listing(" AND s.original_login_name = @P1 AND s.session_id = @P2");
        let rows = client
            .query(recheck, &[&"app", &60i32])
            .await
            .unwrap()
            .into_first_result()
            .await
            .unwrap();
        assert_eq!(rows[0].get::<NaiveDateTime, _>(3), Some(login_local));

        // A live session's login_time is local too.
        let rows = client
            .query(listing(" AND s.session_id = @@SPID"), &[])
            .await
            .unwrap()
            .into_first_result()
            .await
            .unwrap();
        let own = rows[0].get::<NaiveDateTime, _>(3).unwrap();
        let own_utc = sql
            .sessions()
            .into_iter()
            .find(|s| s.login_name == ADMIN)
            .unwrap()
            .login_time;
        assert_eq!(own, sql_datetime_precision(own_utc).naive_utc() + shift);
    }

    // The stored sessions stay UTC.
    let stored = sql.sessions().into_iter().find(|s| s.session_id == 60);
    assert_eq!(stored.unwrap().login_time, before);
    sql.set_utc_offset_minutes(0);
    assert_eq!(clock(&mut client, CLOCK).await, 0);
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
    let recheck = format!("{} AND s.session_id = @P3", session_query());
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

const LOGINPROPERTY: &str = "SELECT LOGINPROPERTY(@P1, 'PasswordLastSetTime') AS password_last_set";

/// The single `password_last_set` cell of a LOGINPROPERTY answer, as tiberius' `chrono`
/// feature reads a `datetime`.
async fn password_last_set(
    client: &mut Conn,
    sql: &str,
    params: &[&dyn tiberius::ToSql],
) -> tiberius::Result<Option<NaiveDateTime>> {
    let rows = client.query(sql, params).await?.into_first_result().await?;
    assert_eq!(rows.len(), 1);
    let columns: Vec<String> = rows[0]
        .columns()
        .iter()
        .map(|c| format!("{} {:?}", c.name(), c.column_type()))
        .collect();
    assert_eq!(columns, ["password_last_set Datetimen"]);
    Ok(rows[0].get::<NaiveDateTime, _>(0))
}

#[tokio::test]
async fn loginproperty_password_last_set_in_server_local_time() {
    let sql = standin().await;
    let set_at = Utc::now() - Duration::days(40) + Duration::microseconds(123_457);
    sql.set_password_last_set("app", Some(set_at));
    sql.set_password_last_set("fresh", None);
    let mut client = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();
    let local =
        |minutes: i64| sql_datetime_precision(set_at).naive_utc() + Duration::minutes(minutes);

    // UTC server clock; login names compare case-insensitively.
    for login in ["app", "APP"] {
        assert_eq!(
            password_last_set(&mut client, LOGINPROPERTY, &[&login])
                .await
                .unwrap(),
            Some(local(0))
        );
    }
    // Unknown login, a login without a value, and NULL: NULL.
    for login in ["nobody", "fresh"] {
        assert_eq!(
            password_last_set(&mut client, LOGINPROPERTY, &[&login])
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(
        password_last_set(&mut client, LOGINPROPERTY, &[&Option::<&str>::None])
            .await
            .unwrap(),
        None
    );

    // A server clock at UTC-5: the value is local time, like login_time.
    sql.set_utc_offset_minutes(-300);
    assert_eq!(
        password_last_set(&mut client, LOGINPROPERTY, &[&"app"])
            .await
            .unwrap(),
        Some(local(-300))
    );
    // As a batch with a literal, free case and whitespace, no AS.
    let row = client
        .simple_query(
            "select  loginproperty ( N'App' ,\n 'passwordlastsettime' ) password_last_set ;",
        )
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<NaiveDateTime, _>(0), Some(local(-300)));
    // Cleared again.
    sql.set_password_last_set("App", None);
    assert_eq!(
        password_last_set(&mut client, LOGINPROPERTY, &[&"app"])
            .await
            .unwrap(),
        None
    );

    // Outside the grammar: 50000.
    for (text, param) in [
        (
            "SELECT LOGINPROPERTY(@P1, 'IsLocked') AS password_last_set",
            "app",
        ),
        (
            "SELECT LOGINPROPERTY(@P1, 'PasswordLastSetTime') AS changed",
            "app",
        ),
        ("SELECT LOGINPROPERTY(@P1, 'PasswordLastSetTime')", "app"),
        (
            "SELECT LOGINPROPERTY(@P1, 'PasswordLastSetTime') AS password_last_set, 1",
            "app",
        ),
    ] {
        let e = client.query(text, &[&param]).await.unwrap_err();
        assert_eq!(server_code(&e), 50000, "{text}");
    }
    let e = client.query(LOGINPROPERTY, &[&5i32]).await.unwrap_err();
    assert_eq!(server_code(&e), 50000);

    let statements = sql.statements();
    assert_eq!(
        statements[0],
        format!("sp_executesql: {LOGINPROPERTY} | @P1='app'")
    );
}

#[tokio::test]
async fn contained_users_by_authenticating_database() {
    let sql = standin().await;
    let t = Utc::now() - Duration::hours(2);
    let contained = |id: i16, login: &str, db: &str| FakeSession {
        authenticating_database: Some(db.to_string()),
        ..session(id, login, t)
    };
    sql.add_session(session(60, "app", t)); // server login
    sql.add_session(contained(61, "app", "orders"));
    sql.add_session(contained(62, "app", "billing"));
    sql.add_session(contained(63, "other", "Orders"));
    sql.add_session(session(64, "other", t));
    let mut client = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();

    // Database ids: master 1, others stable and >= 5, case-insensitive.
    assert_eq!(sql.database_id("master"), 1);
    assert_eq!(sql.database_id("MSDB"), 4);
    let orders = sql.database_id("orders");
    let billing = sql.database_id("billing");
    assert!(orders >= 5 && billing >= 5 && orders != billing);
    assert_eq!(sql.database_id("ORDERS"), orders);
    assert_ne!(sql.database_id("appdb"), orders);

    let ids = |got: Vec<FakeSession>| got.iter().map(|s| s.session_id).collect::<Vec<_>>();
    let by_db =
        listing(" AND s.original_login_name = @P1 AND s.authenticating_database_id = DB_ID(@P2)");
    for (login, db, want) in [
        ("app", "orders", vec![61]),
        ("APP", "ORDERS", vec![61]),
        ("app", "billing", vec![62]),
        ("other", "orders", vec![63]),
        ("app", "master", vec![60]),
        ("app", "nosuchdb", vec![]), // DB_ID is NULL: no row
    ] {
        let got = query_sessions(&mut client, &by_db, &[&login, &db])
            .await
            .unwrap();
        assert_eq!(ids(got), want, "{login} {db}");
    }
    // A NULL database name: DB_ID(NULL) is NULL.
    let got = query_sessions(&mut client, &by_db, &[&"app", &Option::<&str>::None])
        .await
        .unwrap();
    assert!(got.is_empty());

    // Server logins: master's id.
    let server_logins =
        listing(" AND s.original_login_name = @P1 AND s.authenticating_database_id = 1");
    let got = query_sessions(&mut client, &server_logins, &[&"app"])
        .await
        .unwrap();
    assert_eq!(ids(got), [60]);
    let got = query_sessions(&mut client, &server_logins, &[&"other"])
        .await
        .unwrap();
    assert_eq!(ids(got), [64]);
    // The caller's own (LOGIN7) session is a server login too.
    let got = query_sessions(
        &mut client,
        &select_where("s.authenticating_database_id = 1 AND s.original_login_name = @P1"),
        &[&ADMIN],
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 1);

    // Reversed operands, a literal, a batch, <>.
    let got = client
        .simple_query(select_where(
            "DB_ID(N'orders') = s.authenticating_database_id ORDER BY s.session_id",
        ))
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    assert_eq!(ids(got.iter().map(read_session).collect()), [61, 63]);
    let got = query_sessions(
        &mut client,
        &listing(" AND s.authenticating_database_id <> DB_ID(@P1) AND s.session_id <> @@SPID"),
        &[&"master"],
    )
    .await
    .unwrap();
    assert_eq!(ids(got), [61, 62, 63]);

    // ORDER BY s.authenticating_database_id (not in the select list).
    let got = query_sessions(
        &mut client,
        &format!(
            "{} ORDER BY s.authenticating_database_id DESC, s.session_id",
            listing(" AND s.session_id <> @@SPID")
        ),
        &[],
    )
    .await
    .unwrap();
    let mut want = [(61, orders), (62, billing), (63, orders), (60, 1), (64, 1)];
    want.sort_by_key(|(id, db)| (-db, *id));
    assert_eq!(ids(got), want.map(|(id, _)| id));

    // Outside the grammar: 50000.
    for text in [
        // DB_ID compared with another column
        listing(" AND s.session_id = DB_ID(@P1)"),
        // DB_ID of a non-string
        listing(" AND s.authenticating_database_id = DB_ID(5)"),
        // DB_ID() of the current database
        listing(" AND s.authenticating_database_id = DB_ID()"),
        // in the select list
        format!("SELECT {SELECT}, s.authenticating_database_id {FROM}"),
    ] {
        let e = client.query(text.as_str(), &[&"orders"]).await.unwrap_err();
        assert_eq!(server_code(&e), 50000, "{text}");
    }
}

#[tokio::test]
async fn named_instance_through_the_sql_browser() {
    use tiberius::SqlBrowser;

    let sql = standin().await;
    let browser_port = sql.start_browser("INST").await;

    // The browser is asked at the configured host and port; the TCP port comes from it.
    let mut config = Config::from_ado_string(&format!(
        "Server=tcp:127.0.0.1\\INST,{browser_port};Database=master"
    ))
    .unwrap();
    config.authentication(AuthMethod::sql_server(ADMIN, ADMIN_PW));
    config.encryption(EncryptionLevel::NotSupported);
    assert_eq!(config.get_addr(), format!("127.0.0.1:{browser_port}"));
    let tcp = TcpStream::connect_named(&config)
        .await
        .expect("browser lookup");
    assert_eq!(tcp.peer_addr().unwrap().port(), sql.port());
    let mut client = Client::connect(config, tcp.compat_write())
        .await
        .expect("login to the named instance");
    let row = client
        .simple_query("SELECT 1")
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<i32, _>(0), Some(1));

    // The builder, and the instance name in another case.
    let mut config = Config::new();
    config.host("127.0.0.1");
    config.port(browser_port);
    config.instance_name("inst");
    config.authentication(AuthMethod::sql_server(ADMIN, ADMIN_PW));
    config.encryption(EncryptionLevel::NotSupported);
    let tcp = TcpStream::connect_named(&config).await.unwrap();
    let mut client = Client::connect(config, tcp.compat_write()).await.unwrap();
    assert!(my_spid(&mut client).await >= 51);

    // An instance the browser does not know: no answer, tiberius times out.
    let mut config = Config::new();
    config.host("127.0.0.1");
    config.port(browser_port);
    config.instance_name("OTHER");
    let e = TcpStream::connect_named(&config).await.unwrap_err();
    assert!(e.to_string().contains("SQL browser timeout"), "{e}");

    // PRELOGIN validates the client's instance name.
    let mut config = Config::new();
    config.host("127.0.0.1");
    config.port(sql.port());
    config.instance_name("OTHER");
    config.authentication(AuthMethod::sql_server(ADMIN, ADMIN_PW));
    config.encryption(EncryptionLevel::NotSupported);
    let tcp = TcpStream::connect(("127.0.0.1", sql.port())).await.unwrap();
    let Err(e) = Client::connect(config, tcp.compat_write()).await else {
        panic!("a wrong instance name must be refused");
    };
    assert!(matches!(e, tiberius::error::Error::Protocol(_)), "{e:?}");
}
