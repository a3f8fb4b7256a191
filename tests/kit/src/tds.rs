//! A stand-in for Microsoft SQL Server (it cannot be installed on the test machines): it speaks
//! just enough TDS 7.3 for tiberius and simulates `sys.dm_exec_sessions` joined to
//! `sys.dm_exec_connections`, what each session is doing (`sys.dm_exec_requests` and the
//! open transaction, `tds/activity.rs`), the server clock's UTC offset, and KILL.
//!
//! It listens on `127.0.0.1:<free port>` in the test's own process (one task per connection)
//! and is driven through methods on [`TdsStandIn`]. Every SQL batch and RPC it receives is
//! recorded ([`TdsStandIn::statements`]).
//!
//! # Connecting
//!
//! The stand-in has no TLS: its PRELOGIN answers `ENCRYPTION = ENCRYPT_NOT_SUP`, so the client
//! must be configured with `EncryptionLevel::NotSupported` (any other level makes tiberius
//! either refuse or try a TLS handshake the stand-in cannot do). Logins are SQL logins
//! ([`TdsStandIn::allow_login`]; names compare case-insensitively, passwords exactly); anything
//! else gets error 18456 `Login failed for user '<name>'.` (class 14) and the connection is
//! closed. A successful login gets LOGINACK (TDS 7.3B, `0x730B0003`), ENVCHANGEs for the
//! database (`master`, or the LOGIN7 database), language and packet size (the size the client
//! asked for), the usual 5701/5703 INFO messages and DONE.
//!
//! Every connection is a session: ids start at 51 and count up (skipping ids already in the
//! table). Its row ([`FakeSession`]) has the SQL login as both login names, `login_time` = the
//! moment of login, `host_name` = LOGIN7 HostName, `program_name` = LOGIN7 AppName
//! (`Config::application_name`), `database_name` = the login's database, `client_net_address`
//! = the peer address, `status` `running` while it executes a request and `sleeping` otherwise
//! (with `last_request_start_time`/`last_request_end_time` set as each request starts and
//! ends), `is_user_process = true`. The row is removed when the client disconnects.
//!
//! # Statements understood
//!
//! The same text is accepted as a SQL batch (`simple_query`, packet type 0x01) or as the
//! statement of an `sp_executesql` RPC (`query`/`execute`, packet type 0x03, with parameters
//! `@P1`, `@P2`, ... as tiberius sends them). Any other RPC procedure gets error 2812.
//! Keywords and names are case-insensitive; whitespace, newlines, `--`/`/* */` comments,
//! `[bracketed]` names and trailing `;` are free.
//!
//! - `SELECT 1` → one `int` column. `SELECT @@SPID` → one `smallint` column (as in SQL Server;
//!   tiberius reads it as `i16` or `i32`).
//! - The clock query `SELECT DATEDIFF(minute, GETUTCDATE(), GETDATE()) [[AS] name]` → one
//!   `int` column (INTN(4), nullable) named `name` (e.g. `offset_minutes`; empty without an
//!   alias) holding the server clock's distance from UTC in minutes
//!   ([`TdsStandIn::set_utc_offset_minutes`], default 0). `minute` may be written `mi` or `n`;
//!   `GETDATE()`/`SYSDATETIME()` are local time and `GETUTCDATE()`/`SYSUTCDATETIME()` UTC, in
//!   either order (swapped, the value is negated). Any other DATEDIFF gets 50000.
//! - `SELECT LOGINPROPERTY(<login>, 'PasswordLastSetTime') [AS] password_last_set` (the
//!   property name case-insensitive; `<login>` a string parameter `@P1`,
//!   a string literal, or NULL) → one nullable `datetime` column (DATETIMEN 8, like
//!   `login_time`) named `password_last_set`: [`TdsStandIn::set_password_last_set`] for that
//!   login (case-insensitive), in the server's local time (UTC + the UTC offset) and rounded
//!   to 1/300 s; NULL for a login without a value (or unknown, or a NULL login). Any other
//!   property, alias, non-string login or extra select item gets 50000.
//! - `KILL <n>` (digits only, optional `;`), in this order of checks:
//!   - [`TdsStandIn::deny_kill`] set → error 6102 `User does not have permission to use the
//!     KILL statement.` (class 14);
//!   - `n` is not 1..=32767 → error 6101 (class 16);
//!   - `n` is the caller's own session → error 6104 `Cannot use KILL to kill your own
//!     process.` (class 16);
//!   - no session `n` → error 6106 `Process ID <n> is not an active process ID.` (class 11);
//!   - session `n` has `is_user_process = false` → error 6107 `Only user processes can be
//!     killed.` (class 14);
//!   - session `n` has status `rollback`, or its request ([`FakeRequest`]) has status
//!     `rollback` or command `KILLED/ROLLBACK` (it is already being killed) → NOT an error: an INFO
//!     message 6120 (class 0) `SPID <n>: transaction rollback in progress. Estimated rollback
//!     completion: 0%. Estimated time remaining: 0 seconds.` and DONE; the session stays in the
//!     table. tiberius does not surface INFO messages, so the client sees a successful KILL;
//!     only a re-query shows the session still there (status `rollback`). The message number
//!     is the stand-in's choice, not verified against a real server.
//!   - otherwise the row is removed and DONE is answered; if `n` is a live connection to the
//!     stand-in, its socket is closed.
//!
//!   `KILL @P1` is rejected with 102, as SQL Server does (KILL takes a literal only).
//! - The administrator query (is a login a sysadmin, does it hold `CONTROL SERVER`): see
//!   `tds/admins.rs`.
//! - Database drains (the `sys.databases` gate query, `ALTER DATABASE … SET RESTRICTED_USER
//!   WITH ROLLBACK IMMEDIATE` / `SET MULTI_USER`): see `tds/drains.rs`.
//! - Login locks (the gate queries, `ALTER LOGIN … DISABLE | ENABLE`, `REVOKE`/`GRANT
//!   CONNECT` in a database; a disabled login's LOGIN7 gets 18470): see `tds/logins.rs`.
//! - The activity query (each session's request, open transaction and statement text): see
//!   `tds/activity.rs`. Any other statement naming `sys.dm_exec_requests`, `sys.dm_tran_*`
//!   or `sys.dm_exec_sql_text` gets 50000.
//! - The session query, see below. Any other statement starting with `SELECT` or `DECLARE`,
//!   or naming `sys.dm_exec_sessions`/`sys.dm_exec_connections`, is parsed as a session query
//!   and so fails with the error below that fits.
//! - Anything else → error 102 `Incorrect syntax near '<first token>'.` (class 15).
//!
//! Errors come as an ERROR token (number, state, class, message, server `TDSSTANDIN`, empty
//! procedure, line 1) followed by DONE with the error bit; tiberius returns them as
//! `tiberius::error::Error::Server(e)` with `e.code()` the number. Errors meaning the SQL was
//! refused (102, 137, 207, 208, 209, 4104, 50000) are also printed to stderr with the text.
//!
//! ## Contained-database users: `s.authenticating_database_id`
//!
//! [`FakeSession::authenticating_database`] `None` is a server login (authenticated by master,
//! id 1); `Some("orders")` a contained-database user of `orders`. `DB_ID(name)` gives 1 for
//! `master` (2 `tempdb`, 3 `model`, 4 `msdb`) and, for any other database, a stable id ≥ 5
//! assigned the first time the stand-in sees the name (a session's `database_name` or
//! `authenticating_database` — added, logged in, or returned by an [`TdsStandIn::on_query`]
//! hook — or [`TdsStandIn::database_id`]); names compare case-insensitively. `DB_ID` of an
//! unknown name is NULL, so the predicate drops every row. So
//! `AND s.authenticating_database_id = DB_ID(@P2)` selects contained users of database `@P2`,
//! `AND s.authenticating_database_id = 1` server logins. The column can be an ORDER BY item
//! but is not part of the select list (that stays the nine items below).
//!
//! ## SQL Browser (named instances)
//!
//! [`TdsStandIn::start_browser`]`("INST")` answers MC-SQLR `CLNT_UCAST_INST` on a UDP port of
//! 127.0.0.1 with this stand-in's TCP port. tiberius (`sql-browser-tokio`) sends the request
//! to the configured host and port (1434 only when no port is set), so a test configures
//! host `127.0.0.1`, port = the UDP port, instance `INST`: the ADO string
//! `Server=tcp:127.0.0.1\INST,<udp port>` or `config.host(..); config.port(udp);
//! config.instance_name("INST")`, then `tiberius::SqlBrowser::connect_named(&config)` on
//! `tokio::net::TcpStream` and `Client::connect(config, tcp.compat_write())`. PRELOGIN checks
//! the client's INSTOPT instance name: empty, a started instance (case-insensitive), or
//! `MSSQLSERVER` while no instance is started is valid; anything else is answered 0x01 and
//! tiberius fails with `Error::Protocol`.
//!
//! # The session query contract
//!
//! The stand-in binds names and evaluates the WHERE clause like SQL Server; it does not accept
//! arbitrary SQL. The query must be, up to whitespace and case:
//!
//! ```sql
//! [DECLARE @name type [= value] [, ...] [;]]
//! SELECT s.session_id, s.original_login_name, s.login_name, s.login_time, s.host_name,
//!        s.program_name, DB_NAME(s.database_id) AS database_name, c.client_net_address,
//!        s.status
//! FROM sys.dm_exec_sessions [AS] s [WITH (hints)]
//! LEFT [OUTER] JOIN sys.dm_exec_connections [AS] c [WITH (hints)]
//!   ON c.session_id = s.session_id AND c.parent_connection_id IS NULL
//! [WHERE <predicate> [AND <predicate> ...]]
//! [ORDER BY <item> [ASC|DESC] [, ...]] [;]
//! ```
//!
//! - Names are bound as SQL Server binds them, with its errors: the aliases are free (`s`/`c`
//!   above); a view without an alias is known as `dm_exec_sessions` / `sys.dm_exec_sessions`,
//!   one with an alias only by the alias (else 4104 `The multi-part identifier "x.y" could not
//!   be bound.`); an unqualified name must belong to exactly one of the views (`session_id`
//!   is in both: 209 `Ambiguous column name 'session_id'.`); a name the real view does not
//!   have gets 207 `Invalid column name 'x'.` — in particular `database_name` (the view has
//!   `database_id`) and `client_net_address` on `sys.dm_exec_sessions`, and select-list aliases
//!   in WHERE. `dm_exec_sessions` without `sys.` gets 208 `Invalid object name`. Names in these
//!   messages are lower-cased.
//! - The select list is exactly those nine items in this order, each bound to that column
//!   (`s.`/`c.` may be written with other aliases, or unqualified where unambiguous) and giving
//!   exactly these result names: an item may have `[AS] alias` only if the alias is its own
//!   column name, and `DB_NAME(s.database_id)` must be aliased `database_name`. The result
//!   columns are `session_id` smallint, `original_login_name` nvarchar(128), `login_name`
//!   nvarchar(128), `login_time` **datetime** (DATETIMEN, 8 bytes, like the real view; values
//!   rounded to SQL Server's 1/300 s ticks, see [`sql_datetime_precision`]), `host_name`
//!   nvarchar(128) NULL, `program_name` nvarchar(128) NULL, `database_name` nvarchar(128) NULL,
//!   `client_net_address` nvarchar(48) NULL, `status` nvarchar(30).
//! - The join is required (the select list needs `c.client_net_address`) and its ON clause is
//!   exactly those two conditions, in either order, either side of the `=`, optionally
//!   parenthesised. Without `c.parent_connection_id IS NULL` a real server returns one row per
//!   MARS connection, which the stand-in does not simulate, so that is refused (50000); so are
//!   `JOIN`/`INNER`/`RIGHT`/`CROSS` joins, comma joins and extra ON conditions.
//! - Evaluation: [`FakeSession::database_name`] is `DB_NAME(s.database_id)`;
//!   [`FakeSession::client_net_address`] is the session's connection's address, and `None`
//!   means the session has no connection: then every `c.` column is NULL (as the LEFT JOIN
//!   gives), `c.session_id` otherwise equals `s.session_id`.
//! - A predicate is `<operand> <op> <value>` or `<value> <op> <operand>` (op `=`, `<>`, `!=`,
//!   `<`, `<=`, `>`, `>=`) or `<operand> IS [NOT] NULL`. An operand is one of `s.session_id`,
//!   `s.original_login_name`, `s.login_name`, `s.login_time`, `s.host_name`,
//!   `s.program_name`, `s.status`, `s.is_user_process` (bit: compare with 1 or 0),
//!   `DB_NAME(s.database_id)`, `s.authenticating_database_id` (int), `c.session_id`,
//!   `c.client_net_address`. A value is a parameter
//!   (`@P1`...), a variable DECLAREd from one (`DECLARE @login nvarchar(128) = @P1`),
//!   `@@SPID`, a string literal (`N'app'`), an integer or `NULL`; `s.authenticating_database_id`
//!   may also be compared (either side, any op) with `DB_ID(<value>)`, the value a string
//!   (parameter, variable or literal) or NULL — `DB_ID` anywhere else, `DB_ID()` or a
//!   non-string argument gets 50000. Parentheses around
//!   predicates are allowed. `OR`, `NOT`, `IN`, `LIKE`, `BETWEEN`, other functions (`GETDATE()`,
//!   `CAST`, `UPPER`...), column-to-column comparisons, other columns of the real views (e.g.
//!   `s.memory_usage`, `s.database_id` outside DB_NAME, `c.parent_connection_id` outside the
//!   ON clause), `SELECT *`, `TOP`, `DISTINCT`, `ORDER BY <position>`, `GROUP BY`, `OPTION`
//!   ... get error 50000 `TDS stand-in: ...` (a stand-in limitation, not a SQL Server error).
//! - An ORDER BY item is a result column name (`database_name`, `session_id`, ...) or an
//!   operand as above. NULLs sort first (last with DESC). Without ORDER BY rows come back
//!   ordered by `session_id`; ties are broken by `session_id`.
//! - Semantics follow SQL Server: NULL compares as unknown (row dropped); strings compare
//!   case-insensitively ignoring trailing spaces (the default `SQL_Latin1_General_CP1_CI_AS`);
//!   a string compared with `login_time` is converted to `datetime`, which accepts only
//!   `YYYY-MM-DD[THH:MM[:SS[.fff]]]` / `YYYY-MM-DD HH:MM[:SS[.fff]]` / `YYYYMMDD` with at most
//!   3 fractional digits and no zone (else error 241) — a variable DECLAREd `datetime2` accepts
//!   7 digits, `datetimeoffset` also a zone; an unknown `@variable` gets error 137 `Must declare
//!   the scalar variable "@x".`. In particular there is **no implicit `is_user_process = 1`**:
//!   system sessions are returned unless the query excludes them, and the caller's own
//!   session unless it says `s.session_id <> @@SPID`.
//! - Parameter types (as tiberius encodes them): `&str`/`String` → nvarchar; `i16`/`i32`/`i64`
//!   → intn; `NaiveDateTime` and `DateTime<Utc>` (tiberius `chrono` feature) → datetime2(7)
//!   without a zone (a `DateTime<Utc>` is sent as its UTC wall-clock time);
//!   `DateTime<FixedOffset>` → datetimeoffset; a raw `tiberius::ColumnData::DateTime2/...`
//!   works too.
//! - Parameters cannot be named: tiberius always sends them as `@P1`, `@P2`, ... in bind order,
//!   so a query written with `@login`/`@cutoff` must DECLARE them from `@P1`/`@P2` (as it
//!   must for a real server).
//!
//! ## Time zones: `login_time` is the server's local time
//!
//! A real server reports `login_time` (a `datetime`, no zone) in its own local time. The
//! stand-in stores [`FakeSession::login_time`] in UTC and, with
//! [`TdsStandIn::set_utc_offset_minutes`]`(m)`, presents it as UTC + `m` minutes, both in the
//! result rows and in comparisons. A `datetime2`/`datetime` value (e.g. a `NaiveDateTime`
//! parameter) is compared with that local value as it is; a `datetimeoffset` value is compared
//! by its UTC instant with the local value taken as UTC (SQL Server converts the `datetime`
//! column to `datetimeoffset` at +00:00), so it is just as wrong as a UTC `datetime2` when the
//! offset is not zero. The correct client reads the offset with the clock query, sends the
//! cutoff as local time (`(cutoff_utc + offset).naive_utc()` as a `NaiveDateTime`) and turns
//! `login_time` back into UTC by subtracting the offset. Read `login_time` as `NaiveDateTime`
//! (tiberius `chrono` feature); `row.get::<DateTime<Utc>, _>` fails with a conversion error,
//! exactly as it would against SQL Server (tiberius maps only datetime2/datetimeoffset to
//! `DateTime<Utc>`). Without the feature read `ColumnData::DateTime(Some(dt))` (`dt.days()`
//! since 1900-01-01, `dt.seconds_fragments()` in 1/300 s).
//!
//! The engine's queries (parameters bound as `&login`, `&cutoff_local`, `&session_id`):
//!
//! ```sql
//! SELECT DATEDIFF(minute, GETUTCDATE(), GETDATE()) AS offset_minutes
//!
//! SELECT s.session_id, s.original_login_name, s.login_name, s.login_time, s.host_name, s.program_name,
//!        DB_NAME(s.database_id) AS database_name, c.client_net_address, s.status
//! FROM sys.dm_exec_sessions AS s
//! LEFT JOIN sys.dm_exec_connections AS c ON c.session_id = s.session_id AND c.parent_connection_id IS NULL
//! WHERE s.is_user_process = 1 AND s.original_login_name = @P1 AND s.login_time < @P2 AND s.session_id <> @@SPID
//! [ORDER BY s.session_id]
//! ```
//!
//! and, for the re-check before KILL, the same SELECT/FROM/JOIN with
//! `WHERE s.is_user_process = 1 AND s.original_login_name = @P1 AND s.session_id = @P2`.
//!
//! [`TdsStandIn::on_query`] can replace the table contents seen by one query (e.g. the re-check
//! before KILL sees a reused session id); the WHERE clause is still applied to what it returns.
//!
//! # Recorded statements
//!
//! A SQL batch is recorded as its text. An RPC is recorded as
//! `sp_executesql: <statement> | @P1=<value> | @P2=<value>` (no ` | ...` when there are no
//! parameters), values formatted as `'text'` for strings, decimal for integers (bit as 0/1),
//! `%Y-%m-%dT%H:%M:%S%.f` as sent for datetime/datetime2/smalldatetime/date
//! (`2024-05-01T12:00:00`, `2024-05-01T12:00:00.924644100`: 0, 3, 6 or 9 fractional digits;
//! no zone, so a local cutoff shows as local time), the same plus the offset for
//! datetimeoffset (`2024-05-01T07:00:00-05:00`), `NULL`. Any other RPC is recorded as
//! `rpc <name>: ...` the same way. Requests are recorded before they run, so failing ones are
//! recorded too.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, NaiveDateTime, Timelike, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

mod activity;
mod admins;
mod drains;
mod logins;

pub use activity::FakeRequest;

/// One session: its row of the simulated `sys.dm_exec_sessions` and its connection in
/// `sys.dm_exec_connections`.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeSession {
    pub session_id: i16,
    pub original_login_name: String,
    pub login_name: String,
    /// In UTC. Sent to the client as `datetime` in the server's local time (UTC plus
    /// [`TdsStandIn::set_utc_offset_minutes`]), rounded to 1/300 s (see
    /// [`sql_datetime_precision`]).
    pub login_time: DateTime<Utc>,
    pub host_name: Option<String>,
    pub program_name: Option<String>,
    /// What `DB_NAME(s.database_id)` gives.
    pub database_name: Option<String>,
    /// The connection's `c.client_net_address`; `None` means the session has no connection
    /// (the LEFT JOIN's `c.` columns are then all NULL).
    pub client_net_address: Option<String>,
    /// "sleeping", "running", "rollback" ...
    pub status: String,
    pub is_user_process: bool,
    /// The database that authenticated the session (`s.authenticating_database_id`): `None`
    /// is master (id 1), i.e. a server login; `Some("orders")` is a contained-database user
    /// of `orders` (see [`TdsStandIn::database_id`]).
    pub authenticating_database: Option<String>,
    /// The request it runs (`sys.dm_exec_requests`), if any; see `tds/activity.rs`.
    pub request: Option<FakeRequest>,
    /// When its open transaction began (`sys.dm_tran_active_transactions`), in UTC; `None`
    /// with none open.
    pub transaction_begin_time: Option<DateTime<Utc>>,
    /// When its last request began, in UTC; `None` reads as `login_time`.
    pub last_request_start_time: Option<DateTime<Utc>>,
    /// When its last request ended, in UTC; `None` reads as NULL.
    pub last_request_end_time: Option<DateTime<Utc>>,
}

type QueryHook = Arc<dyn Fn(&str, &[FakeSession]) -> Option<Vec<FakeSession>> + Send + Sync>;

/// A live client connection of the stand-in.
struct LiveConn {
    conn_id: u64,
    login_time: DateTime<Utc>,
    kill: Arc<Notify>,
}

struct State {
    /// (login, password)
    logins: Vec<(String, String)>,
    sessions: BTreeMap<i16, FakeSession>,
    statements: Vec<String>,
    deny_kill: bool,
    hook: Option<QueryHook>,
    live: HashMap<i16, LiveConn>,
    next_spid: i16,
    next_conn: u64,
    /// The server clock's distance from UTC ([`TdsStandIn::set_utc_offset_minutes`]).
    utc_offset_minutes: i32,
    /// `LOGINPROPERTY(login, 'PasswordLastSetTime')` by lower-cased login, in UTC.
    password_last_set: HashMap<String, Option<DateTime<Utc>>>,
    /// User databases (lower-case) in the order first seen: database id 5 + index.
    databases: Vec<String>,
    /// Named instances announced by [`TdsStandIn::start_browser`].
    instances: Vec<String>,
    /// Server-level standing by lower-cased login, for the administrator query.
    server_standing: HashMap<String, admins::ServerStanding>,
    /// Whether the caller holds `VIEW ANY DEFINITION` ([`TdsStandIn::set_view_any_definition`]).
    view_any_definition: bool,
    /// Disabled logins and contained users' `CONNECT`, for login locks (`tds/logins.rs`).
    gates: logins::Gates,
    /// `user_access_desc` by lower-cased database, where set (`tds/drains.rs`).
    user_access: Vec<(String, String)>,
}

impl State {
    /// Makes `name` a known database (ids are assigned on first sight and never change).
    fn register_database(&mut self, name: &str) {
        let name = name.trim_end_matches(' ').to_lowercase();
        if system_database_id(&name).is_none() && !self.databases.contains(&name) {
            self.databases.push(name);
        }
    }

    fn register_session_databases(&mut self, s: &FakeSession) {
        for name in [&s.database_name, &s.authenticating_database]
            .into_iter()
            .flatten()
        {
            self.register_database(name);
        }
    }
}

/// `DB_ID` of the system databases.
fn system_database_id(lower: &str) -> Option<i64> {
    ["master", "tempdb", "model", "msdb"]
        .iter()
        .position(|d| *d == lower)
        .map(|i| i as i64 + 1)
}

/// `DB_ID(name)` against the known user databases; `None` (NULL) for an unknown one.
fn database_id(databases: &[String], name: &str) -> Option<i64> {
    let lower = name.trim_end_matches(' ').to_lowercase();
    system_database_id(&lower).or_else(|| {
        databases
            .iter()
            .position(|d| *d == lower)
            .map(|i| i as i64 + 5)
    })
}

/// The in-process SQL Server stand-in. Dropping it stops the listener and every connection.
pub struct TdsStandIn {
    state: Arc<Mutex<State>>,
    port: u16,
    task: JoinHandle<()>,
    /// SQL Browser responders ([`TdsStandIn::start_browser`]).
    browsers: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for TdsStandIn {
    fn drop(&mut self) {
        self.task.abort();
        for browser in self
            .browsers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            browser.abort();
        }
    }
}

impl TdsStandIn {
    pub async fn start() -> TdsStandIn {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TDS stand-in");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(State {
            logins: Vec::new(),
            sessions: BTreeMap::new(),
            statements: Vec::new(),
            deny_kill: false,
            hook: None,
            live: HashMap::new(),
            next_spid: 51,
            next_conn: 1,
            utc_offset_minutes: 0,
            password_last_set: HashMap::new(),
            databases: Vec::new(),
            instances: Vec::new(),
            server_standing: HashMap::new(),
            view_any_definition: true,
            gates: logins::Gates::default(),
            user_access: Vec::new(),
        }));
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in the set, so aborting this task ends them too.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, peer)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        connections.spawn(serve(stream, peer, accept_state.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        TdsStandIn {
            state,
            port,
            task,
            browsers: Mutex::new(Vec::new()),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accept this SQL login (name, password) at LOGIN7; anything else gets login-failed (error 18456) and the connection closed.
    pub fn allow_login(&self, login: &str, password: &str) {
        let mut st = self.lock();
        st.logins.retain(|(l, _)| !l.eq_ignore_ascii_case(login));
        st.logins.push((login.to_string(), password.to_string()));
    }

    /// Adds a session row to the simulated sys.dm_exec_sessions.
    /// Its `database_name` and `authenticating_database` become known databases (see
    /// [`database_id`](Self::database_id)).
    pub fn add_session(&self, s: FakeSession) {
        let mut st = self.lock();
        st.register_session_databases(&s);
        st.sessions.insert(s.session_id, s);
    }

    /// What `DB_ID(name)` answers: 1 for master (2 tempdb, 3 model, 4 msdb); every other
    /// database gets a stable id ≥ 5 the first time it is seen (in a session's
    /// `database_name` or `authenticating_database`, or through this method, which registers
    /// `name`). Names compare case-insensitively.
    pub fn database_id(&self, name: &str) -> i64 {
        let mut st = self.lock();
        st.register_database(name);
        database_id(&st.databases, name).expect("registered")
    }

    /// What `LOGINPROPERTY(login, 'PasswordLastSetTime')` answers for `login` (compared
    /// case-insensitively): `at` in UTC, presented in the server's local time like
    /// `login_time`; `None` (or a login never set) answers NULL.
    pub fn set_password_last_set(&self, login: &str, at: Option<DateTime<Utc>>) {
        self.lock()
            .password_last_set
            .insert(login.trim_end_matches(' ').to_lowercase(), at);
    }

    /// Starts a SQL Server Browser (MC-SQLR) responder for the named instance `instance` on
    /// `127.0.0.1:<free UDP port>` and returns that port. A `CLNT_UCAST_INST` request (byte
    /// 0x04 followed by the instance name, case-insensitive) is answered with `SVR_RESP`
    /// (0x05, u16 LE length, `ServerName;TDSSTANDIN;InstanceName;<instance>;IsClustered;No;
    /// Version;15.0.2000.5;tcp;<this stand-in's TCP port>;;`); `CLNT_BCAST_EX` and
    /// `CLNT_UCAST_EX` (0x02, 0x03) get the same for every started instance. A request for
    /// another instance, or anything else, gets no answer (as from a real browser; tiberius
    /// times out after 1 s).
    ///
    /// It also makes PRELOGIN validate the client's INSTOPT: an instance name other than
    /// the started ones is answered with validity byte 0x01 (tiberius then fails with
    /// `Error::Protocol("server rejected the requested instance ...")`).
    ///
    /// tiberius (`sql-browser-tokio` feature) asks the browser at `config.get_addr()`, i.e.
    /// the configured host and port: a named instance with an explicit port uses that port
    /// for the browser (1434 only when no port is set). So configure host `127.0.0.1`, port
    /// = the returned UDP port, instance name = `instance` (ADO:
    /// `Server=tcp:127.0.0.1\INST,<udp port>`), then `TcpStream::connect_named(&config)`
    /// (`tiberius::SqlBrowser`).
    pub async fn start_browser(&self, instance: &str) -> u16 {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind the SQL Browser stand-in");
        let udp_port = socket.local_addr().expect("local addr").port();
        self.lock().instances.push(instance.to_string());
        let state = self.state.clone();
        let tcp_port = self.port;
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let instances = lock(&state).instances.clone();
                let announce = |name: &str| {
                    format!(
                        "ServerName;{SERVER_NAME};InstanceName;{name};IsClustered;No;\
                         Version;15.0.2000.5;tcp;{tcp_port};;"
                    )
                };
                let data = match buf[..len].split_first() {
                    Some((0x04, name)) => {
                        let name = String::from_utf8_lossy(name);
                        let name = name.trim_end_matches('\0');
                        match instances.iter().find(|i| i.eq_ignore_ascii_case(name)) {
                            Some(i) => announce(i),
                            None => continue,
                        }
                    }
                    Some((0x02 | 0x03, _)) => instances.iter().map(|i| announce(i)).collect(),
                    _ => continue,
                };
                let mut reply = vec![0x05];
                reply.extend_from_slice(&(data.len() as u16).to_le_bytes());
                reply.extend_from_slice(data.as_bytes());
                let _ = socket.send_to(&reply, peer).await;
            }
        });
        self.browsers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        udp_port
    }

    /// The simulated sessions, ordered by session id (`login_time` in UTC, as stored).
    pub fn sessions(&self) -> Vec<FakeSession> {
        self.lock().sessions.values().cloned().collect()
    }

    /// Every SQL batch text received, in order.
    ///
    /// RPCs are included as `sp_executesql: <statement> | @P1=<value> | ...` (see the module
    /// docs for the value formats).
    pub fn statements(&self) -> Vec<String> {
        self.lock().statements.clone()
    }

    /// When set, KILL answers with error 6102 "User does not have permission to use the KILL statement." (severity 14) instead of killing.
    pub fn deny_kill(&self, deny: bool) {
        self.lock().deny_kill = deny;
    }

    /// Puts the simulated server's clock in a time zone `minutes` east of UTC (default 0;
    /// -300 is UTC-5): the clock query answers `minutes`, and `login_time` is presented and
    /// compared in that local time (the stored [`FakeSession::login_time`] stays UTC), as a
    /// real server whose clock is not in UTC does.
    pub fn set_utc_offset_minutes(&self, minutes: i32) {
        assert!(
            (-14 * 60..=14 * 60).contains(&minutes),
            "a UTC offset is within -14:00..=+14:00, not {minutes} minutes"
        );
        self.lock().utc_offset_minutes = minutes;
    }

    /// Scripted answer for the session query: a hook so tests can return different rows the second time (e.g. the re-check before KILL sees a reused session id). Default: answer from the table.
    ///
    /// The hook gets the request as recorded in [`statements`](Self::statements) and the
    /// current table; `Some(rows)` replaces the table for this one query (the WHERE clause is
    /// still applied to them), `None` keeps the table.
    #[allow(clippy::type_complexity)] // the signature is the documented API
    pub fn on_query(
        &self,
        f: Box<dyn Fn(&str, &[FakeSession]) -> Option<Vec<FakeSession>> + Send + Sync>,
    ) {
        self.lock().hook = Some(Arc::from(f));
    }
}

/// What a client reading `login_time` gets for `t`: SQL Server's `datetime` keeps 1/300 s
/// ticks (rounded), and tiberius (`chrono` feature) turns ticks back into nanoseconds with
/// `ticks * 10^9 / 300`, truncating.
pub fn sql_datetime_precision(t: DateTime<Utc>) -> DateTime<Utc> {
    let (days, ticks) = to_sql_datetime(t.naive_utc());
    from_sql_datetime(days, ticks).and_utc()
}

/// `datetime` wire value: days since 1900-01-01 and 1/300 s ticks since midnight (rounded).
fn to_sql_datetime(t: NaiveDateTime) -> (i32, u32) {
    let base = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
    let mut days = (t.date() - base).num_days() as i32;
    let nanos = t.time().num_seconds_from_midnight() as u64 * 1_000_000_000 + t.nanosecond() as u64;
    let mut ticks = (nanos * 300 + 500_000_000) / 1_000_000_000;
    if ticks >= 300 * 86_400 {
        ticks = 0;
        days += 1;
    }
    (days, ticks as u32)
}

fn from_sql_datetime(days: i32, ticks: u32) -> NaiveDateTime {
    let base = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
    let date = base + ChronoDuration::days(days as i64);
    date.and_hms_opt(0, 0, 0).unwrap()
        + ChronoDuration::nanoseconds(ticks as i64 * 1_000_000_000 / 300)
}

// ---------------------------------------------------------------------------------------------
// Connection handling
// ---------------------------------------------------------------------------------------------

const PKT_SQL_BATCH: u8 = 0x01;
const PKT_RPC: u8 = 0x03;
const PKT_REPLY: u8 = 0x04;
const PKT_ATTENTION: u8 = 0x06;
const PKT_LOGIN7: u8 = 0x10;
const PKT_PRELOGIN: u8 = 0x12;

const SERVER_NAME: &str = "TDSSTANDIN";

struct Conn {
    stream: TcpStream,
    packet_size: usize,
    packet_id: u8,
    spid: u16,
}

impl Conn {
    /// Reads one message (packets up to END_OF_MESSAGE); `None` on a clean close.
    async fn read_message(&mut self) -> io::Result<Option<(u8, Vec<u8>)>> {
        let mut payload = Vec::new();
        let mut first_type = None;
        loop {
            let mut header = [0u8; 8];
            match self.stream.read_exact(&mut header).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && first_type.is_none() => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
            let length = u16::from_be_bytes([header[2], header[3]]) as usize;
            if length < 8 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "packet length < 8",
                ));
            }
            let start = payload.len();
            payload.resize(start + length - 8, 0);
            self.stream.read_exact(&mut payload[start..]).await?;
            first_type.get_or_insert(header[0]);
            if header[1] & 0x01 != 0 {
                return Ok(Some((first_type.unwrap(), payload)));
            }
        }
    }

    /// Sends a reply message, split into packets of the negotiated size.
    async fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        let chunk = self.packet_size - 8;
        let mut out = Vec::with_capacity(payload.len() + 8 * (payload.len() / chunk + 1));
        let mut parts = payload.chunks(chunk).peekable();
        if parts.peek().is_none() {
            out.extend_from_slice(&[PKT_REPLY, 0x01, 0, 8]);
            out.extend_from_slice(&self.spid.to_be_bytes());
            out.extend_from_slice(&[self.packet_id, 0]);
            self.packet_id = self.packet_id.wrapping_add(1);
        }
        while let Some(part) = parts.next() {
            let status = if parts.peek().is_none() { 0x01 } else { 0x00 };
            out.push(PKT_REPLY);
            out.push(status);
            out.extend_from_slice(&((part.len() + 8) as u16).to_be_bytes());
            out.extend_from_slice(&self.spid.to_be_bytes());
            out.push(self.packet_id);
            out.push(0);
            out.extend_from_slice(part);
            self.packet_id = self.packet_id.wrapping_add(1);
        }
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, state: Arc<Mutex<State>>) {
    let mut conn = Conn {
        stream,
        packet_size: 4096,
        packet_id: 1,
        spid: 0,
    };
    let mut registered = None;
    let result = run_connection(&mut conn, peer, &state, &mut registered).await;
    if let Err(e) = result
        && e.kind() != io::ErrorKind::UnexpectedEof
        && e.kind() != io::ErrorKind::ConnectionReset
    {
        eprintln!("tds stand-in: connection from {peer} ended: {e}");
    }
    if let Some((spid, conn_id)) = registered {
        let mut st = lock(&state);
        let mine = st.live.get(&spid).map(|l| (l.conn_id, l.login_time));
        if let Some((id, login_time)) = mine
            && id == conn_id
        {
            st.live.remove(&spid);
            if st.sessions.get(&spid).map(|s| s.login_time) == Some(login_time) {
                st.sessions.remove(&spid);
            }
        }
    }
    let _ = conn.stream.shutdown().await;
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run_connection(
    conn: &mut Conn,
    peer: SocketAddr,
    state: &Arc<Mutex<State>>,
    registered: &mut Option<(i16, u64)>,
) -> io::Result<()> {
    // PRELOGIN
    let Some((ty, prelogin)) = conn.read_message().await? else {
        return Ok(());
    };
    if ty != PKT_PRELOGIN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected PRELOGIN, got packet type {ty:#04x}"),
        ));
    }
    let instance_ok = {
        let requested = prelogin_instance(&prelogin);
        let st = lock(state);
        requested.is_empty()
            || st
                .instances
                .iter()
                .any(|i| i.eq_ignore_ascii_case(&requested))
            || (st.instances.is_empty() && requested.eq_ignore_ascii_case("MSSQLSERVER"))
    };
    conn.send(&prelogin_response(instance_ok)).await?;

    // LOGIN7
    let Some((ty, login)) = conn.read_message().await? else {
        return Ok(());
    };
    if ty != PKT_LOGIN7 {
        // A TLS handshake wrapped in PRELOGIN packets lands here: the client did not ask for
        // EncryptionLevel::NotSupported.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "expected LOGIN7, got packet type {ty:#04x} (the client must use EncryptionLevel::NotSupported)"
            ),
        ));
    }
    let login = parse_login7(&login)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed LOGIN7"))?;

    let accepted = {
        let st = lock(state);
        st.logins
            .iter()
            .find(|(l, p)| l.eq_ignore_ascii_case(&login.user) && *p == login.password)
            .map(|(l, _)| l.clone())
    };
    let disabled = accepted
        .as_deref()
        .is_some_and(|l| logins::is_disabled(&lock(state), l));
    let (Some(canonical_login), false) = (accepted, disabled) else {
        let refusal = match disabled {
            true => SqlError::new(
                18470,
                1,
                14,
                format!(
                    "Login failed for user '{}'. Reason: The account is disabled.",
                    login.user
                ),
            ),
            false => SqlError::new(
                18456,
                1,
                14,
                format!("Login failed for user '{}'.", login.user),
            ),
        };
        let mut out = Vec::new();
        put_message(&mut out, 0xAA, &refusal);
        put_done(&mut out, 0xFD, DONE_ERROR, 0, 0);
        conn.send(&out).await?;
        return Ok(());
    };

    let kill = Arc::new(Notify::new());
    let database = if login.database.is_empty() {
        "master".to_string()
    } else {
        login.database.clone()
    };
    let spid = {
        let mut st = lock(state);
        let mut spid = st.next_spid;
        while st.sessions.contains_key(&spid) || st.live.contains_key(&spid) {
            spid = spid.checked_add(1).unwrap_or(51);
        }
        st.next_spid = spid.checked_add(1).unwrap_or(51);
        let conn_id = st.next_conn;
        st.next_conn += 1;
        let login_time = Utc::now();
        st.register_database(&database);
        st.sessions.insert(
            spid,
            FakeSession {
                session_id: spid,
                original_login_name: canonical_login.clone(),
                login_name: canonical_login.clone(),
                login_time,
                host_name: Some(login.host.clone()).filter(|h| !h.is_empty()),
                program_name: Some(login.app.clone()).filter(|a| !a.is_empty()),
                database_name: Some(database.clone()),
                client_net_address: Some(peer.ip().to_string()),
                status: "sleeping".to_string(),
                is_user_process: true,
                authenticating_database: None,
                request: None,
                transaction_begin_time: None,
                last_request_start_time: None,
                last_request_end_time: None,
            },
        );
        st.live.insert(
            spid,
            LiveConn {
                conn_id,
                login_time,
                kill: kill.clone(),
            },
        );
        *registered = Some((spid, conn_id));
        spid
    };
    conn.spid = spid as u16;

    let requested = login.packet_size as usize;
    let packet_size = if requested == 0 {
        4096
    } else {
        requested.clamp(512, 32767)
    };
    let mut out = Vec::new();
    put_login_ack(&mut out);
    put_env_change(&mut out, 1, &database, "master");
    put_message(
        &mut out,
        0xAB,
        &SqlError::new(
            5701,
            2,
            0,
            format!("Changed database context to '{database}'."),
        ),
    );
    put_env_change(&mut out, 2, "us_english", "");
    put_message(
        &mut out,
        0xAB,
        &SqlError::new(
            5703,
            1,
            0,
            "Changed language setting to us_english.".to_string(),
        ),
    );
    put_env_change(&mut out, 4, &packet_size.to_string(), "4096");
    put_done(&mut out, 0xFD, 0, 0, 0);
    conn.send(&out).await?;
    conn.packet_size = packet_size;

    loop {
        let message = tokio::select! {
            biased;
            _ = kill.notified() => return Ok(()),
            m = conn.read_message() => m?,
        };
        let Some((ty, payload)) = message else {
            return Ok(());
        };
        set_status(state, spid, "running");
        let reply = match ty {
            PKT_SQL_BATCH => {
                let text = decode_utf16(skip_all_headers(&payload)?);
                lock(state).statements.push(text.clone());
                let outcome = execute(state, spid, &text, &[], &text);
                encode_outcome(outcome, false)
            }
            PKT_RPC => {
                let rpc = parse_rpc(skip_all_headers(&payload)?).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "malformed RPC request")
                })?;
                handle_rpc(state, spid, rpc)
            }
            PKT_ATTENTION => {
                let mut out = Vec::new();
                put_done(&mut out, 0xFD, DONE_ATTN, 0, 0);
                out
            }
            other => {
                let mut out = Vec::new();
                put_message(
                    &mut out,
                    0xAA,
                    &SqlError::standin(format!("unsupported request packet type {other:#04x}")),
                );
                put_done(&mut out, 0xFD, DONE_ERROR, 0, 0);
                out
            }
        };
        set_status(state, spid, "sleeping");
        conn.send(&reply).await?;
    }
}

fn set_status(state: &Mutex<State>, spid: i16, status: &str) {
    let mut st = lock(state);
    if let Some(s) = st.sessions.get_mut(&spid)
        && s.status != "rollback"
    {
        s.status = status.to_string();
        // As `sys.dm_exec_sessions` records a live connection's requests.
        match status {
            "running" => s.last_request_start_time = Some(Utc::now()),
            _ => s.last_request_end_time = Some(Utc::now()),
        }
    }
}

/// The client's PRELOGIN INSTOPT (instance name to validate), empty if none.
fn prelogin_instance(p: &[u8]) -> String {
    let mut at = 0;
    while let Some(&token) = p.get(at) {
        if token == 0xFF {
            break;
        }
        let Some(h) = p.get(at + 1..at + 5) else {
            break;
        };
        if token == 0x02 {
            let offset = u16::from_be_bytes([h[0], h[1]]) as usize;
            let len = u16::from_be_bytes([h[2], h[3]]) as usize;
            let bytes = p.get(offset..offset + len).unwrap_or_default();
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            return String::from_utf8_lossy(&bytes[..end]).into_owned();
        }
        at += 5;
    }
    String::new()
}

/// PRELOGIN answer; INSTOPT is 0x00 if the client's instance name is valid, else 0x01.
fn prelogin_response(instance_ok: bool) -> Vec<u8> {
    let instopt: &[u8] = if instance_ok { &[0x00] } else { &[0x01] };
    // (token, data)
    let options: [(u8, &[u8]); 5] = [
        (0x00, &[15, 0, 0x07, 0xD0, 0, 0]), // VERSION 15.0.2000, sub-build 0
        (0x01, &[0x02]),                    // ENCRYPTION = ENCRYPT_NOT_SUP
        (0x02, instopt),                    // INSTOPT: valid (0x00) or not
        (0x03, &[]),                        // THREADID: empty from the server
        (0x04, &[0x00]),                    // MARS off
    ];
    let mut out = Vec::new();
    let mut offset = options.len() * 5 + 1;
    for (token, data) in options.iter() {
        out.push(*token);
        out.extend_from_slice(&(offset as u16).to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        offset += data.len();
    }
    out.push(0xFF);
    for (_, data) in options.iter() {
        out.extend_from_slice(data);
    }
    out
}

struct Login7 {
    user: String,
    password: String,
    app: String,
    host: String,
    database: String,
    packet_size: u32,
}

fn parse_login7(p: &[u8]) -> Option<Login7> {
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_le_bytes([*p.get(at)?, *p.get(at + 1)?]) as usize)
    };
    let text = |at: usize| -> Option<Vec<u8>> {
        let offset = u16_at(at)?;
        let chars = u16_at(at + 2)?;
        p.get(offset..offset + chars * 2).map(|b| b.to_vec())
    };
    let packet_size = u32::from_le_bytes(p.get(8..12)?.try_into().ok()?);
    let password: Vec<u8> = text(44)?
        .into_iter()
        .map(|b| (b ^ 0xA5).rotate_left(4))
        .collect();
    Some(Login7 {
        host: decode_utf16(&text(36)?),
        user: decode_utf16(&text(40)?),
        password: decode_utf16(&password),
        app: decode_utf16(&text(48)?),
        database: decode_utf16(&text(68)?),
        packet_size,
    })
}

fn decode_utf16(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

fn skip_all_headers(p: &[u8]) -> io::Result<&[u8]> {
    let total = p
        .get(0..4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "missing ALL_HEADERS"))?;
    if total < 4 || total > p.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad ALL_HEADERS length",
        ));
    }
    Ok(&p[total..])
}

// ---------------------------------------------------------------------------------------------
// Token encoding
// ---------------------------------------------------------------------------------------------

const DONE_MORE: u16 = 0x01;
const DONE_ERROR: u16 = 0x02;
const DONE_COUNT: u16 = 0x10;
const DONE_ATTN: u16 = 0x20;

/// SQL_Latin1_General_CP1_CI_AS: LCID 0x0409, flags 0xD0 (ignore case/kana/width), sort 52.
const COLLATION: [u8; 5] = [0x09, 0x04, 0xD0, 0x00, 0x34];

fn put_b_varchar(out: &mut Vec<u8>, s: &str) {
    let units: Vec<u16> = s.encode_utf16().take(255).collect();
    out.push(units.len() as u8);
    for u in units {
        out.extend_from_slice(&u.to_le_bytes());
    }
}

fn put_us_varchar(out: &mut Vec<u8>, s: &str) {
    let units: Vec<u16> = s.encode_utf16().take(65535).collect();
    out.extend_from_slice(&(units.len() as u16).to_le_bytes());
    for u in units {
        out.extend_from_slice(&u.to_le_bytes());
    }
}

fn put_done(out: &mut Vec<u8>, token: u8, status: u16, cur_cmd: u16, rows: u64) {
    out.push(token);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&cur_cmd.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
}

/// ERROR (0xAA) or INFO (0xAB) token, as tiberius' `decode_error_info_body` reads it (TDS 7.2+:
/// 4-byte line number).
fn put_message(out: &mut Vec<u8>, token: u8, e: &SqlError) {
    let mut body = Vec::new();
    body.extend_from_slice(&e.number.to_le_bytes());
    body.push(e.state);
    body.push(e.class);
    put_us_varchar(&mut body, &e.message);
    put_b_varchar(&mut body, SERVER_NAME);
    put_b_varchar(&mut body, "");
    body.extend_from_slice(&1u32.to_le_bytes());
    out.push(token);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
}

fn put_login_ack(out: &mut Vec<u8>) {
    let mut body = vec![0x01]; // interface: SQL_TSQL
    body.extend_from_slice(&0x730B_0003u32.to_be_bytes()); // TDS 7.3B, read big-endian
    put_b_varchar(&mut body, "Microsoft SQL Server");
    body.extend_from_slice(&[15, 0, 0x07, 0xD0]); // 15.0.2000
    out.push(0xAD);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
}

fn put_env_change(out: &mut Vec<u8>, ty: u8, new: &str, old: &str) {
    let mut body = vec![ty];
    put_b_varchar(&mut body, new);
    put_b_varchar(&mut body, old);
    out.push(0xE3);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
}

#[derive(Clone, Copy)]
enum ColType {
    /// INTN(2)
    SmallInt,
    /// INTN(4)
    Int,
    /// NVARCHAR(n characters)
    NVarChar(u16),
    /// DATETIMEN(8)
    DateTime,
}

struct ColDef {
    name: String,
    ty: ColType,
    nullable: bool,
}

enum Cell {
    Null,
    I16(i16),
    I32(i32),
    Str(String),
    DateTime(NaiveDateTime),
}

fn put_col_metadata(out: &mut Vec<u8>, cols: &[ColDef]) {
    out.push(0x81);
    out.extend_from_slice(&(cols.len() as u16).to_le_bytes());
    for c in cols {
        out.extend_from_slice(&0u32.to_le_bytes()); // UserType
        let flags: u16 = if c.nullable { 0x0001 } else { 0x0000 };
        out.extend_from_slice(&flags.to_le_bytes());
        match c.ty {
            ColType::SmallInt => out.extend_from_slice(&[0x26, 2]),
            ColType::Int => out.extend_from_slice(&[0x26, 4]),
            ColType::NVarChar(chars) => {
                out.push(0xE7);
                out.extend_from_slice(&(chars * 2).to_le_bytes());
                out.extend_from_slice(&COLLATION);
            }
            ColType::DateTime => out.extend_from_slice(&[0x6F, 8]),
        }
        put_b_varchar(out, &c.name);
    }
}

fn put_row(out: &mut Vec<u8>, cols: &[ColDef], cells: &[Cell]) {
    out.push(0xD1);
    for (col, cell) in cols.iter().zip(cells) {
        match (col.ty, cell) {
            (ColType::NVarChar(_), Cell::Null) => out.extend_from_slice(&0xFFFFu16.to_le_bytes()),
            (_, Cell::Null) => out.push(0),
            (_, Cell::I16(v)) => {
                out.push(2);
                out.extend_from_slice(&v.to_le_bytes());
            }
            (_, Cell::I32(v)) => {
                out.push(4);
                out.extend_from_slice(&v.to_le_bytes());
            }
            (_, Cell::Str(s)) => {
                let bytes: Vec<u8> = s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
                out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                out.extend_from_slice(&bytes);
            }
            (_, Cell::DateTime(t)) => {
                let (days, ticks) = to_sql_datetime(*t);
                out.push(8);
                out.extend_from_slice(&days.to_le_bytes());
                out.extend_from_slice(&ticks.to_le_bytes());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct SqlError {
    number: u32,
    state: u8,
    class: u8,
    message: String,
}

impl SqlError {
    fn new(number: u32, state: u8, class: u8, message: String) -> Self {
        SqlError {
            number,
            state,
            class,
            message,
        }
    }

    /// A limitation of the stand-in (not something SQL Server would answer).
    fn standin(message: String) -> Self {
        SqlError::new(50000, 1, 16, format!("TDS stand-in: {message}"))
    }

    fn syntax(near: &str) -> Self {
        SqlError::new(102, 1, 15, format!("Incorrect syntax near '{near}'."))
    }
}

enum Outcome {
    Rows {
        cols: Vec<ColDef>,
        rows: Vec<Vec<Cell>>,
    },
    Done,
    Info(SqlError),
    Error(SqlError),
}

fn encode_outcome(outcome: Outcome, rpc: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let (status, cur_cmd, count) = match outcome {
        Outcome::Rows { cols, rows } => {
            put_col_metadata(&mut out, &cols);
            for row in &rows {
                put_row(&mut out, &cols, row);
            }
            (DONE_COUNT, 0xC1, rows.len() as u64)
        }
        Outcome::Done => (0, 0, 0),
        Outcome::Info(info) => {
            put_message(&mut out, 0xAB, &info);
            (0, 0, 0)
        }
        Outcome::Error(e) => {
            put_message(&mut out, 0xAA, &e);
            (DONE_ERROR, 0, 0)
        }
    };
    if rpc {
        if status & DONE_ERROR == 0 {
            put_done(&mut out, 0xFF, status | DONE_MORE, cur_cmd, count);
        }
        out.push(0x79); // RETURNSTATUS
        out.extend_from_slice(&0u32.to_le_bytes());
        put_done(&mut out, 0xFE, status & DONE_ERROR, 0xE0, 0);
    } else {
        put_done(&mut out, 0xFD, status, cur_cmd, count);
    }
    out
}

/// A parameter or literal value.
#[derive(Debug, Clone, PartialEq)]
enum SqlVal {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
    /// datetime, datetime2, smalldatetime, date: a date and time without a zone.
    Time(NaiveDateTime),
    /// datetimeoffset: the instant (as UTC) and the offset it was given with.
    Instant {
        utc: NaiveDateTime,
        offset_minutes: i16,
    },
    Bytes(Vec<u8>),
    Other(String),
}

impl fmt::Display for SqlVal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlVal::Null => write!(f, "NULL"),
            SqlVal::Int(i) => write!(f, "{i}"),
            SqlVal::Float(x) => write!(f, "{x}"),
            SqlVal::Str(s) => write!(f, "'{s}'"),
            SqlVal::Time(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.f")),
            SqlVal::Instant {
                utc,
                offset_minutes,
            } => {
                let local = *utc + ChronoDuration::minutes(*offset_minutes as i64);
                let sign = if *offset_minutes < 0 { '-' } else { '+' };
                let off = offset_minutes.unsigned_abs();
                write!(
                    f,
                    "{}{sign}{:02}:{:02}",
                    local.format("%Y-%m-%dT%H:%M:%S%.f"),
                    off / 60,
                    off % 60
                )
            }
            SqlVal::Bytes(b) => {
                write!(f, "0x")?;
                b.iter().try_for_each(|x| write!(f, "{x:02X}"))
            }
            SqlVal::Other(s) => write!(f, "{s}"),
        }
    }
}

struct Rpc {
    proc_name: String,
    /// (name, value), in order.
    params: Vec<(String, SqlVal)>,
}

struct Reader<'a> {
    p: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.p.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn at_end(&self) -> bool {
        self.pos >= self.p.len()
    }
    /// PLP (partially length-prefixed) value; `None` inside `Some` is NULL.
    fn plp(&mut self) -> Option<Option<Vec<u8>>> {
        let total = self.u64()?;
        if total == u64::MAX {
            return Some(None);
        }
        let mut data = Vec::new();
        loop {
            let chunk = self.u32()? as usize;
            if chunk == 0 {
                return Some(Some(data));
            }
            data.extend_from_slice(self.take(chunk)?);
        }
    }
}

fn parse_rpc(p: &[u8]) -> Option<Rpc> {
    let mut r = Reader { p, pos: 0 };
    let name_len = r.u16()?;
    let proc_name = if name_len == 0xFFFF {
        match r.u16()? {
            10 => "sp_executesql".to_string(),
            id => format!("proc id {id}"),
        }
    } else {
        decode_utf16(r.take(name_len as usize * 2)?)
    };
    let _option_flags = r.u16()?;
    let mut params = Vec::new();
    while !r.at_end() {
        let b = r.p[r.pos];
        if b == 0x80 || b == 0xFF {
            break; // BatchFlag / NoExecFlag: a further RPC in the same request, not supported
        }
        let name_chars = r.u8()? as usize;
        let name = decode_utf16(r.take(name_chars * 2)?);
        let _status = r.u8()?;
        let value = read_typed_value(&mut r)?;
        params.push((name, value));
    }
    Some(Rpc { proc_name, params })
}

/// Reads TYPE_INFO followed by the value, as tiberius encodes an RPC parameter.
fn read_typed_value(r: &mut Reader<'_>) -> Option<SqlVal> {
    let ty = r.u8()?;
    let fixed = |r: &mut Reader<'_>, n: usize| r.take(n).map(|b| b.to_vec());
    Some(match ty {
        0x1F => SqlVal::Null,
        0x30 => SqlVal::Int(r.u8()? as i64),
        0x32 => SqlVal::Int(r.u8()? as i64),
        0x34 => SqlVal::Int(i16::from_le_bytes(fixed(r, 2)?.try_into().ok()?) as i64),
        0x38 => SqlVal::Int(i32::from_le_bytes(fixed(r, 4)?.try_into().ok()?) as i64),
        0x7F => SqlVal::Int(i64::from_le_bytes(fixed(r, 8)?.try_into().ok()?)),
        0x3B => SqlVal::Float(f32::from_le_bytes(fixed(r, 4)?.try_into().ok()?) as f64),
        0x3E => SqlVal::Float(f64::from_le_bytes(fixed(r, 8)?.try_into().ok()?)),
        0x3A => decode_smalldatetime(&fixed(r, 4)?)?,
        0x3D => decode_datetime(&fixed(r, 8)?)?,
        0x3C => decode_money(&fixed(r, 8)?)?,
        0x7A => decode_money(&fixed(r, 4)?)?,
        // INTN, BITN, FLTN, MONEYN, DATETIMN, GUID: 1-byte max length, 1-byte actual length
        0x26 | 0x68 | 0x6D | 0x6E | 0x6F | 0x24 => {
            let _max = r.u8()?;
            let len = r.u8()? as usize;
            let v = r.take(len)?;
            if len == 0 {
                SqlVal::Null
            } else {
                match ty {
                    0x26 | 0x68 => SqlVal::Int(match len {
                        1 => v[0] as i64,
                        2 => i16::from_le_bytes(v.try_into().ok()?) as i64,
                        4 => i32::from_le_bytes(v.try_into().ok()?) as i64,
                        8 => i64::from_le_bytes(v.try_into().ok()?),
                        _ => return None,
                    }),
                    0x6D => SqlVal::Float(match len {
                        4 => f32::from_le_bytes(v.try_into().ok()?) as f64,
                        8 => f64::from_le_bytes(v.try_into().ok()?),
                        _ => return None,
                    }),
                    0x6E => decode_money(v)?,
                    0x6F if len == 4 => decode_smalldatetime(v)?,
                    0x6F => decode_datetime(v)?,
                    _ => SqlVal::Other(format!("guid 0x{}", hex(v))),
                }
            }
        }
        // DECIMALN / NUMERICN
        0x6A | 0x6C => {
            let _max = r.u8()?;
            let _precision = r.u8()?;
            let scale = r.u8()?;
            let len = r.u8()? as usize;
            if len == 0 {
                SqlVal::Null
            } else {
                let v = r.take(len)?;
                let mut magnitude = [0u8; 16];
                let digits = &v[1..];
                magnitude[..digits.len().min(16)].copy_from_slice(&digits[..digits.len().min(16)]);
                let m = u128::from_le_bytes(magnitude);
                let sign = if v[0] == 0 { "-" } else { "" };
                let div = 10u128.pow(scale as u32);
                if scale == 0 {
                    SqlVal::Other(format!("{sign}{m}"))
                } else {
                    SqlVal::Other(format!(
                        "{sign}{}.{:0width$}",
                        m / div,
                        m % div,
                        width = scale as usize
                    ))
                }
            }
        }
        // DATEN
        0x28 => {
            let len = r.u8()? as usize;
            if len == 0 {
                SqlVal::Null
            } else {
                let date = decode_date(r.take(len)?)?;
                SqlVal::Time(date.and_hms_opt(0, 0, 0)?)
            }
        }
        // TIMEN, DATETIME2N, DATETIMEOFFSETN
        0x29..=0x2B => {
            let scale = r.u8()?;
            let len = r.u8()? as usize;
            if len == 0 {
                SqlVal::Null
            } else {
                let v = r.take(len)?;
                let time_len = time_len(scale)?;
                let nanos = decode_time_nanos(v.get(..time_len)?, scale);
                let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0);
                match ty {
                    0x29 => SqlVal::Other(format!(
                        "time {}",
                        (midnight(NaiveDate::from_ymd_opt(2000, 1, 1)?)?
                            + ChronoDuration::nanoseconds(nanos))
                        .format("%H:%M:%S%.f")
                    )),
                    0x2A => {
                        let date = decode_date(v.get(time_len..time_len + 3)?)?;
                        SqlVal::Time(midnight(date)? + ChronoDuration::nanoseconds(nanos))
                    }
                    _ => {
                        // DATETIMEOFFSET carries the UTC date and time, then the offset.
                        let date = decode_date(v.get(time_len..time_len + 3)?)?;
                        let offset = v.get(time_len + 3..time_len + 5)?;
                        SqlVal::Instant {
                            utc: midnight(date)? + ChronoDuration::nanoseconds(nanos),
                            offset_minutes: i16::from_le_bytes([offset[0], offset[1]]),
                        }
                    }
                }
            }
        }
        // NVARCHAR, NCHAR, BIGVARCHAR, BIGCHAR, BIGVARBINARY, BIGBINARY
        0xE7 | 0xEF | 0xA7 | 0xAF | 0xA5 | 0xAD => {
            let max = r.u16()?;
            if matches!(ty, 0xE7 | 0xEF | 0xA7 | 0xAF) {
                r.take(5)?; // collation
            }
            let data = if max == 0xFFFF {
                r.plp()?
            } else {
                match r.u16()? {
                    0xFFFF => None,
                    len => Some(r.take(len as usize)?.to_vec()),
                }
            };
            match data {
                None => SqlVal::Null,
                Some(d) => match ty {
                    0xE7 | 0xEF => SqlVal::Str(decode_utf16(&d)),
                    0xA7 | 0xAF => SqlVal::Str(String::from_utf8_lossy(&d).into_owned()),
                    _ => SqlVal::Bytes(d),
                },
            }
        }
        // XML without a schema
        0xF1 => {
            if r.u8()? != 0 {
                return None;
            }
            match r.plp()? {
                None => SqlVal::Null,
                Some(d) => SqlVal::Other(format!("xml {}", decode_utf16(&d))),
            }
        }
        _ => return None,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn decode_datetime(v: &[u8]) -> Option<SqlVal> {
    let days = i32::from_le_bytes(v.get(0..4)?.try_into().ok()?);
    let ticks = u32::from_le_bytes(v.get(4..8)?.try_into().ok()?);
    Some(SqlVal::Time(from_sql_datetime(days, ticks)))
}

fn decode_smalldatetime(v: &[u8]) -> Option<SqlVal> {
    let days = u16::from_le_bytes(v.get(0..2)?.try_into().ok()?);
    let minutes = u16::from_le_bytes(v.get(2..4)?.try_into().ok()?);
    let base = NaiveDate::from_ymd_opt(1900, 1, 1)?.and_hms_opt(0, 0, 0)?;
    Some(SqlVal::Time(
        base + ChronoDuration::days(days as i64) + ChronoDuration::minutes(minutes as i64),
    ))
}

fn decode_money(v: &[u8]) -> Option<SqlVal> {
    let units = match v.len() {
        4 => i32::from_le_bytes(v.try_into().ok()?) as i64,
        8 => {
            let high = i32::from_le_bytes(v[0..4].try_into().ok()?) as i64;
            let low = u32::from_le_bytes(v[4..8].try_into().ok()?) as i64;
            (high << 32) | low
        }
        _ => return None,
    };
    Some(SqlVal::Float(units as f64 / 10_000.0))
}

fn decode_date(v: &[u8]) -> Option<NaiveDate> {
    let days = u32::from_le_bytes([*v.first()?, *v.get(1)?, *v.get(2)?, 0]);
    NaiveDate::from_ymd_opt(1, 1, 1)?.checked_add_signed(ChronoDuration::days(days as i64))
}

fn time_len(scale: u8) -> Option<usize> {
    match scale {
        0..=2 => Some(3),
        3..=4 => Some(4),
        5..=7 => Some(5),
        _ => None,
    }
}

fn decode_time_nanos(v: &[u8], scale: u8) -> i64 {
    let mut bytes = [0u8; 8];
    bytes[..v.len()].copy_from_slice(v);
    let increments = u64::from_le_bytes(bytes);
    (increments * 10u64.pow(9 - scale as u32)) as i64
}

fn handle_rpc(state: &Mutex<State>, spid: i16, rpc: Rpc) -> Vec<u8> {
    let is_executesql = rpc.proc_name.eq_ignore_ascii_case("sp_executesql")
        || rpc.proc_name.eq_ignore_ascii_case("sys.sp_executesql");
    // sp_executesql: @stmt, @params (the declaration string), then the values.
    let mut params = rpc.params.into_iter();
    let (label, stmt, values): (String, Option<String>, Vec<(String, SqlVal)>) = if is_executesql {
        let stmt = match params.next() {
            Some((_, SqlVal::Str(s))) => Some(s),
            _ => None,
        };
        let _declaration = params.next();
        let values = params
            .enumerate()
            .map(|(i, (name, v))| {
                let name = if name.is_empty() {
                    format!("@P{}", i + 1)
                } else {
                    name
                };
                (name, v)
            })
            .collect();
        ("sp_executesql".to_string(), stmt, values)
    } else {
        (format!("rpc {}", rpc.proc_name), None, params.collect())
    };

    let mut recorded = format!("{label}: {}", stmt.as_deref().unwrap_or(""));
    for (name, v) in &values {
        recorded.push_str(&format!(" | {name}={v}"));
    }
    lock(state).statements.push(recorded.clone());

    let outcome = match stmt {
        Some(stmt) => execute(state, spid, &stmt, &values, &recorded),
        None if is_executesql => Outcome::Error(SqlError::new(
            214,
            2,
            16,
            "Procedure expects parameter '@statement' of type 'ntext/nchar/nvarchar'.".to_string(),
        )),
        None => Outcome::Error(SqlError::new(
            2812,
            62,
            16,
            format!("Could not find stored procedure '{}'.", rpc.proc_name),
        )),
    };
    encode_outcome(outcome, true)
}

// ---------------------------------------------------------------------------------------------
// SQL
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// Identifier or keyword, lower-cased, brackets/quotes removed.
    Ident(String),
    /// `@name`, lower-cased, without the `@`.
    Var(String),
    /// `@@name`, lower-cased, without the `@@`.
    Global(String),
    Str(String),
    Num(i64),
    Sym(String),
}

impl Tok {
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Tok::Ident(s) if s == kw)
    }
    fn is_sym(&self, sym: &str) -> bool {
        matches!(self, Tok::Sym(s) if s == sym)
    }
    fn text(&self) -> String {
        match self {
            Tok::Ident(s) | Tok::Sym(s) => s.clone(),
            Tok::Var(s) => format!("@{s}"),
            Tok::Global(s) => format!("@@{s}"),
            Tok::Str(s) => s.clone(),
            Tok::Num(n) => n.to_string(),
        }
    }
}

fn tokenize(s: &str) -> Result<Vec<Tok>, SqlError> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let ident_char = |c: char| c.is_alphanumeric() || c == '_' || c == '$' || c == '#';
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == '\'' || ((c == 'N' || c == 'n') && chars.get(i + 1) == Some(&'\'')) {
            i += if c == '\'' { 1 } else { 2 };
            let mut lit = String::new();
            loop {
                match chars.get(i) {
                    None => {
                        return Err(SqlError::new(
                            105,
                            1,
                            15,
                            format!("Unclosed quotation mark after the character string '{lit}'."),
                        ));
                    }
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        lit.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        lit.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(lit));
        } else if c == '[' || c == '"' {
            let close = if c == '[' { ']' } else { '"' };
            i += 1;
            let mut name = String::new();
            while i < chars.len() {
                if chars[i] == close {
                    if chars.get(i + 1) == Some(&close) {
                        name.push(close);
                        i += 2;
                        continue;
                    }
                    break;
                }
                name.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(Tok::Ident(name.to_lowercase()));
        } else if c == '@' {
            let global = chars.get(i + 1) == Some(&'@');
            i += if global { 2 } else { 1 };
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect::<String>().to_lowercase();
            out.push(if global {
                Tok::Global(name)
            } else {
                Tok::Var(name)
            });
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let digits: String = chars[start..i].iter().collect();
            match digits.parse() {
                Ok(n) => out.push(Tok::Num(n)),
                Err(_) => return Err(SqlError::syntax(&digits)),
            }
        } else if c.is_alphabetic() || c == '_' || c == '#' {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            out.push(Tok::Ident(
                chars[start..i].iter().collect::<String>().to_lowercase(),
            ));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["<>", "!=", "<=", ">=", "!<", "!>"].contains(&two.as_str()) {
                out.push(Tok::Sym(two));
                i += 2;
            } else {
                out.push(Tok::Sym(c.to_string()));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Runs one statement text (batch or sp_executesql) for session `spid`.
fn execute(
    state: &Mutex<State>,
    spid: i16,
    text: &str,
    params: &[(String, SqlVal)],
    recorded: &str,
) -> Outcome {
    match execute_inner(state, spid, text, params, recorded) {
        Ok(outcome) => outcome,
        Err(e) => {
            // Errors that mean the client sent SQL the stand-in (or SQL Server) refuses.
            if [102, 137, 207, 208, 209, 4104, 50000].contains(&e.number) {
                eprintln!("tds stand-in: cannot run {text:?}: {}", e.message);
            }
            Outcome::Error(e)
        }
    }
}

fn execute_inner(
    state: &Mutex<State>,
    spid: i16,
    text: &str,
    params: &[(String, SqlVal)],
    recorded: &str,
) -> Result<Outcome, SqlError> {
    let mut toks = tokenize(text)?;
    while toks.last().is_some_and(|t| t.is_sym(";")) {
        toks.pop();
    }
    let Some(first) = toks.first() else {
        return Ok(Outcome::Done);
    };

    if first.is_kw("kill") {
        return match toks.as_slice() {
            [_, Tok::Num(n)] => Ok(kill(state, spid, *n)),
            [_, next, ..] => Err(SqlError::syntax(&next.text())),
            [_] => Err(SqlError::syntax("KILL")),
            [] => unreachable!(),
        };
    }
    if first.is_kw("select") && toks.len() == 2 {
        match &toks[1] {
            Tok::Num(1) => {
                return Ok(Outcome::Rows {
                    cols: vec![ColDef {
                        name: String::new(),
                        ty: ColType::Int,
                        nullable: false,
                    }],
                    rows: vec![vec![Cell::I32(1)]],
                });
            }
            Tok::Global(g) if g == "spid" => {
                return Ok(Outcome::Rows {
                    cols: vec![ColDef {
                        name: String::new(),
                        ty: ColType::SmallInt,
                        nullable: false,
                    }],
                    rows: vec![vec![Cell::I16(spid)]],
                });
            }
            _ => {}
        }
    }
    if first.is_kw("select") && toks.get(1).is_some_and(|t| t.is_kw("datediff")) {
        let offset = lock(state).utc_offset_minutes;
        return clock_query(&toks, offset);
    }
    if first.is_kw("select") && toks.get(1).is_some_and(|t| t.is_kw("loginproperty")) {
        return loginproperty_query(state, &toks, params);
    }
    if let Some(outcome) = drains::statement(state, spid, &toks, params) {
        return outcome;
    }
    if let Some(outcome) = logins::statement(state, spid, &toks, params) {
        return outcome;
    }
    if first.is_kw("with") {
        return match admins::is_admin_query(&toks) {
            true => admins::admin_query(state, spid, params),
            false => Err(SqlError::standin(
                "the only WITH statement simulated is the administrator query (tds/admins.rs)"
                    .into(),
            )),
        };
    }
    if activity::is_activity_query(&toks) {
        return activity::activity_query(state, spid, params);
    }
    if activity::mentions_activity_views(&toks) {
        return Err(activity::refused());
    }
    let mentions_views = toks.windows(3).any(|w| {
        w[0].is_kw("sys")
            && w[1].is_sym(".")
            && (w[2].is_kw("dm_exec_sessions") || w[2].is_kw("dm_exec_connections"))
    });
    if mentions_views || first.is_kw("select") || first.is_kw("declare") {
        return session_query(state, spid, &toks, params, recorded);
    }
    Err(SqlError::syntax(&first.text()))
}

fn kill(state: &Mutex<State>, own: i16, n: i64) -> Outcome {
    let mut st = lock(state);
    if st.deny_kill {
        return Outcome::Error(SqlError::new(
            6102,
            1,
            14,
            "User does not have permission to use the KILL statement.".to_string(),
        ));
    }
    let Ok(id) = i16::try_from(n) else {
        return Outcome::Error(invalid_spid(n));
    };
    if id < 1 {
        return Outcome::Error(invalid_spid(n));
    }
    if id == own {
        return Outcome::Error(SqlError::new(
            6104,
            1,
            16,
            "Cannot use KILL to kill your own process.".to_string(),
        ));
    }
    let Some(session) = st.sessions.get(&id) else {
        return Outcome::Error(SqlError::new(
            6106,
            1,
            11,
            format!("Process ID {id} is not an active process ID."),
        ));
    };
    if !session.is_user_process {
        return Outcome::Error(SqlError::new(
            6107,
            1,
            14,
            "Only user processes can be killed.".to_string(),
        ));
    }
    let killed = session.request.as_ref().is_some_and(|r| {
        r.status.eq_ignore_ascii_case("rollback")
            || r.command.eq_ignore_ascii_case("KILLED/ROLLBACK")
    });
    if session.status.eq_ignore_ascii_case("rollback") || killed {
        return Outcome::Info(SqlError::new(
            6120,
            1,
            0,
            format!(
                "SPID {id}: transaction rollback in progress. Estimated rollback completion: 0%. Estimated time remaining: 0 seconds."
            ),
        ));
    }
    st.sessions.remove(&id);
    if let Some(live) = st.live.remove(&id) {
        live.kill.notify_one();
    }
    Outcome::Done
}

fn invalid_spid(n: i64) -> SqlError {
    SqlError::new(
        6101,
        1,
        16,
        format!("Process ID {n} is not a valid process ID. Choose a number between 1 and 32767."),
    )
}

/// `SELECT DATEDIFF(minute, <clock>(), <clock>()) [[AS] name]`: the server clock's distance
/// from UTC, as a client asks for it.
fn clock_query(toks: &[Tok], offset_minutes: i32) -> Result<Outcome, SqlError> {
    let shape = || {
        SqlError::standin(
            "the only DATEDIFF simulated is SELECT DATEDIFF(minute, GETUTCDATE(), GETDATE()) \
             [AS name] (GETDATE()/SYSDATETIME() are local, GETUTCDATE()/SYSUTCDATETIME() UTC)"
                .to_string(),
        )
    };
    let mut p = Parser::new(toks, &[], 0);
    p.expect_kw("select")?;
    p.expect_kw("datediff")?;
    if !p.eat_sym("(") {
        return Err(shape());
    }
    match p.next() {
        Some(Tok::Ident(part)) if ["minute", "mi", "n"].contains(&part.as_str()) => {}
        _ => return Err(shape()),
    }
    let clock = |p: &mut Parser<'_>| -> Result<i32, SqlError> {
        if !p.eat_sym(",") {
            return Err(shape());
        }
        let minutes = match p.next() {
            Some(Tok::Ident(f)) if f == "getdate" || f == "sysdatetime" => offset_minutes,
            Some(Tok::Ident(f)) if f == "getutcdate" || f == "sysutcdatetime" => 0,
            _ => return Err(shape()),
        };
        if !(p.eat_sym("(") && p.eat_sym(")")) {
            return Err(shape());
        }
        Ok(minutes)
    };
    let start = clock(&mut p)?;
    let end = clock(&mut p)?;
    if !p.eat_sym(")") {
        return Err(shape());
    }
    let name = if p.eat_kw("as") {
        match p.next() {
            Some(Tok::Ident(name)) => name.clone(),
            _ => return Err(shape()),
        }
    } else if let Some(Tok::Ident(name)) = p.peek() {
        p.pos += 1;
        name.clone()
    } else {
        String::new()
    };
    while p.eat_sym(";") {}
    if p.peek().is_some() {
        return Err(shape());
    }
    Ok(Outcome::Rows {
        cols: vec![ColDef {
            name,
            ty: ColType::Int,
            nullable: true,
        }],
        rows: vec![vec![Cell::I32(end - start)]],
    })
}

/// `SELECT LOGINPROPERTY(<login>, 'PasswordLastSetTime') [AS] password_last_set`: one
/// nullable `datetime` in the server's local time.
fn loginproperty_query(
    state: &Mutex<State>,
    toks: &[Tok],
    params: &[(String, SqlVal)],
) -> Result<Outcome, SqlError> {
    let shape = || {
        SqlError::standin(
            "the only LOGINPROPERTY simulated is SELECT LOGINPROPERTY(@P1, \
             'PasswordLastSetTime') AS password_last_set (@P1 or a literal: a string login)"
                .to_string(),
        )
    };
    let mut p = Parser::new(toks, params, 0);
    p.expect_kw("select")?;
    p.expect_kw("loginproperty")?;
    if !p.eat_sym("(") {
        return Err(shape());
    }
    let login = match p.value()? {
        Some(SqlVal::Str(login)) => Some(login),
        Some(SqlVal::Null) => None,
        _ => return Err(shape()),
    };
    if !p.eat_sym(",") {
        return Err(shape());
    }
    match p.next() {
        Some(Tok::Str(property)) if property.eq_ignore_ascii_case("PasswordLastSetTime") => {}
        _ => return Err(shape()),
    }
    if !p.eat_sym(")") {
        return Err(shape());
    }
    p.eat_kw("as");
    if !p.eat_kw("password_last_set") {
        return Err(shape());
    }
    while p.eat_sym(";") {}
    if p.peek().is_some() {
        return Err(shape());
    }
    let cell = {
        let st = lock(state);
        let offset = ChronoDuration::minutes(st.utc_offset_minutes as i64);
        login
            .and_then(|l| {
                let key = l.trim_end_matches(' ').to_lowercase();
                st.password_last_set.get(&key).copied().flatten()
            })
            .map_or(Cell::Null, |at| Cell::DateTime(at.naive_utc() + offset))
    };
    Ok(Outcome::Rows {
        cols: vec![ColDef {
            name: "password_last_set".to_string(),
            ty: ColType::DateTime,
            nullable: true,
        }],
        rows: vec![vec![cell]],
    })
}

/// The session query's select list, in order: what each item must evaluate to and the name
/// of its result column.
const SELECT_LIST: [(Col, &str); 9] = [
    (Col::SessionId, "session_id"),
    (Col::OriginalLoginName, "original_login_name"),
    (Col::LoginName, "login_name"),
    (Col::LoginTime, "login_time"),
    (Col::HostName, "host_name"),
    (Col::ProgramName, "program_name"),
    (Col::DatabaseName, "database_name"),
    (Col::ClientNetAddress, "client_net_address"),
    (Col::Status, "status"),
];

const EXPECTED_SELECT: &str = "s.session_id, s.original_login_name, s.login_name, s.login_time, \
     s.host_name, s.program_name, DB_NAME(s.database_id) AS database_name, c.client_net_address, \
     s.status";

const EXPECTED_JOIN: &str = "FROM sys.dm_exec_sessions AS s LEFT JOIN sys.dm_exec_connections AS c \
     ON c.session_id = s.session_id AND c.parent_connection_id IS NULL";

/// Every column of the real `sys.dm_exec_sessions` (SQL Server 2022): a name outside this list
/// gets SQL Server's error 207, a name in it that the stand-in does not simulate gets 50000.
const SESSIONS_VIEW_COLUMNS: &[&str] = &[
    "session_id",
    "login_time",
    "host_name",
    "program_name",
    "host_process_id",
    "client_version",
    "client_interface_name",
    "security_id",
    "login_name",
    "nt_domain",
    "nt_user_name",
    "status",
    "context_info",
    "cpu_time",
    "memory_usage",
    "total_scheduled_time",
    "total_elapsed_time",
    "endpoint_id",
    "last_request_start_time",
    "last_request_end_time",
    "reads",
    "writes",
    "logical_reads",
    "is_user_process",
    "text_size",
    "language",
    "date_format",
    "date_first",
    "quoted_identifier",
    "arithabort",
    "ansi_null_dflt_on",
    "ansi_defaults",
    "ansi_warnings",
    "ansi_padding",
    "ansi_nulls",
    "concat_null_yields_null",
    "transaction_isolation_level",
    "lock_timeout",
    "deadlock_priority",
    "row_count",
    "prev_error",
    "original_security_id",
    "original_login_name",
    "last_successful_logon",
    "last_unsuccessful_logon",
    "unsuccessful_logons",
    "group_id",
    "database_id",
    "authenticating_database_id",
    "open_transaction_count",
    "page_server_reads",
    "contained_availability_group_id",
];

/// Every column of the real `sys.dm_exec_connections`.
const CONNECTIONS_VIEW_COLUMNS: &[&str] = &[
    "session_id",
    "most_recent_session_id",
    "connect_time",
    "net_transport",
    "protocol_type",
    "protocol_version",
    "endpoint_id",
    "encrypt_option",
    "auth_scheme",
    "node_affinity",
    "num_reads",
    "num_writes",
    "last_read",
    "last_write",
    "net_packet_size",
    "client_net_address",
    "client_tcp_port",
    "local_net_address",
    "local_tcp_port",
    "connection_id",
    "parent_connection_id",
    "most_recent_sql_handle",
];

/// Words that end a table source instead of being its alias.
const NOT_AN_ALIAS: &[&str] = &[
    "where", "order", "with", "left", "right", "inner", "join", "cross", "full", "outer", "on",
    "option", "group", "having", "union", "for", "and", "or", "apply",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum View {
    Sessions,
    Connections,
}

impl View {
    fn name(self) -> &'static str {
        match self {
            View::Sessions => "dm_exec_sessions",
            View::Connections => "dm_exec_connections",
        }
    }

    /// The view's column called `name`, if the real view has one.
    fn column(self, name: &str) -> Option<&'static str> {
        let columns = match self {
            View::Sessions => SESSIONS_VIEW_COLUMNS,
            View::Connections => CONNECTIONS_VIEW_COLUMNS,
        };
        columns.iter().copied().find(|c| *c == name)
    }
}

/// A view in the FROM clause and the name it is exposed under.
struct TableRef {
    view: View,
    alias: Option<String>,
}

impl TableRef {
    /// Whether `qualifier` (the parts before the column name) names this table: its alias
    /// if it has one (then only the alias), else `[db.]sys.<view>` or `<view>`.
    fn exposes(&self, qualifier: &[String]) -> bool {
        match &self.alias {
            Some(alias) => qualifier.len() == 1 && qualifier[0] == *alias,
            None => match qualifier {
                [view] => view == self.view.name(),
                [.., sys, view] if qualifier.len() <= 3 => sys == "sys" && view == self.view.name(),
                _ => false,
            },
        }
    }
}

/// A column expression as written, before it is bound to the FROM clause.
#[derive(Debug, Clone)]
enum RawExpr {
    /// `[qualifier.]column`, as its parts.
    Column(Vec<String>),
    /// `DB_NAME(<column>)`.
    DbName(Vec<String>),
}

impl RawExpr {
    /// The result column name SQL Server gives the expression when it has no alias.
    fn default_name(&self) -> String {
        match self {
            RawExpr::Column(parts) => parts.last().cloned().unwrap_or_default(),
            RawExpr::DbName(_) => String::new(),
        }
    }

    fn text(&self) -> String {
        match self {
            RawExpr::Column(parts) => parts.join("."),
            RawExpr::DbName(parts) => format!("DB_NAME({})", parts.join(".")),
        }
    }
}

/// One condition of the join's ON clause.
#[derive(Debug, Clone, Copy, PartialEq)]
enum JoinTerm {
    /// `c.session_id = s.session_id`
    Key,
    /// `c.parent_connection_id IS NULL`
    Parent,
}

fn join_shape(extra: &str) -> SqlError {
    SqlError::standin(format!("the join must be {EXPECTED_JOIN}{extra}"))
}

/// A simulated column (or expression) of the session query.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Col {
    /// `s.session_id`
    SessionId,
    OriginalLoginName,
    LoginName,
    LoginTime,
    HostName,
    ProgramName,
    /// `DB_NAME(s.database_id)`
    DatabaseName,
    /// `c.client_net_address`
    ClientNetAddress,
    Status,
    IsUserProcess,
    /// `c.session_id`: NULL when the session has no connection.
    ConnSessionId,
    /// `s.authenticating_database_id`: 1 (master) for a server login.
    AuthDbId,
}

impl Col {
    /// How the column is written in the session query.
    fn sql(self) -> &'static str {
        match self {
            Col::SessionId => "s.session_id",
            Col::OriginalLoginName => "s.original_login_name",
            Col::LoginName => "s.login_name",
            Col::LoginTime => "s.login_time",
            Col::HostName => "s.host_name",
            Col::ProgramName => "s.program_name",
            Col::DatabaseName => "DB_NAME(s.database_id)",
            Col::ClientNetAddress => "c.client_net_address",
            Col::Status => "s.status",
            Col::IsUserProcess => "s.is_user_process",
            Col::ConnSessionId => "c.session_id",
            Col::AuthDbId => "s.authenticating_database_id",
        }
    }

    /// The simulated column for a bound view column.
    fn of(view: View, name: &str) -> Result<Col, SqlError> {
        Ok(match (view, name) {
            (View::Sessions, "session_id") => Col::SessionId,
            (View::Sessions, "original_login_name") => Col::OriginalLoginName,
            (View::Sessions, "login_name") => Col::LoginName,
            (View::Sessions, "login_time") => Col::LoginTime,
            (View::Sessions, "host_name") => Col::HostName,
            (View::Sessions, "program_name") => Col::ProgramName,
            (View::Sessions, "status") => Col::Status,
            (View::Sessions, "is_user_process") => Col::IsUserProcess,
            (View::Sessions, "authenticating_database_id") => Col::AuthDbId,
            (View::Connections, "session_id") => Col::ConnSessionId,
            (View::Connections, "client_net_address") => Col::ClientNetAddress,
            (View::Sessions, "database_id") => {
                return Err(SqlError::standin(
                    "sys.dm_exec_sessions.database_id is simulated only as DB_NAME(s.database_id)"
                        .to_string(),
                ));
            }
            (View::Connections, "parent_connection_id") => {
                return Err(SqlError::standin(
                    "sys.dm_exec_connections.parent_connection_id is simulated only in the \
                     JOIN's ON clause (c.parent_connection_id IS NULL)"
                        .to_string(),
                ));
            }
            (view, name) => {
                return Err(SqlError::standin(format!(
                    "column {name} of sys.{} is not simulated (simulated: s.session_id, \
                     s.original_login_name, s.login_name, s.login_time, s.host_name, \
                     s.program_name, s.status, s.is_user_process, DB_NAME(s.database_id), \
                     s.authenticating_database_id, c.session_id, c.client_net_address)",
                    view.name()
                )));
            }
        })
    }

    fn kind(self) -> Kind {
        match self {
            Col::SessionId | Col::IsUserProcess | Col::ConnSessionId | Col::AuthDbId => Kind::Int,
            Col::LoginTime => Kind::Time,
            _ => Kind::Str,
        }
    }

    /// The value a row has for this column; `login_time` is in the server's local time.
    fn value(self, s: &FakeSession, env: &Env) -> SqlVal {
        let utc_offset = env.utc_offset;
        let opt = |v: &Option<String>| v.clone().map_or(SqlVal::Null, SqlVal::Str);
        match self {
            Col::SessionId => SqlVal::Int(s.session_id as i64),
            Col::OriginalLoginName => SqlVal::Str(s.original_login_name.clone()),
            Col::LoginName => SqlVal::Str(s.login_name.clone()),
            Col::LoginTime => {
                SqlVal::Time(sql_datetime_precision(s.login_time).naive_utc() + utc_offset)
            }
            Col::HostName => opt(&s.host_name),
            Col::ProgramName => opt(&s.program_name),
            Col::DatabaseName => opt(&s.database_name),
            Col::ClientNetAddress => opt(&s.client_net_address),
            Col::Status => SqlVal::Str(s.status.clone()),
            Col::IsUserProcess => SqlVal::Int(s.is_user_process as i64),
            // The LEFT JOIN finds a connection exactly when the session has an address.
            Col::ConnSessionId => match s.client_net_address {
                Some(_) => SqlVal::Int(s.session_id as i64),
                None => SqlVal::Null,
            },
            Col::AuthDbId => match &s.authenticating_database {
                None => SqlVal::Int(1),
                Some(db) => database_id(&env.databases, db).map_or(SqlVal::Null, SqlVal::Int),
            },
        }
    }
}

/// What evaluating a row needs besides the row.
struct Env {
    utc_offset: ChronoDuration,
    /// The known user databases ([`State::databases`]).
    databases: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Str,
    Time,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn parse(t: &Tok) -> Option<Op> {
        let Tok::Sym(s) = t else { return None };
        Some(match s.as_str() {
            "=" => Op::Eq,
            "<>" | "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" | "!>" => Op::Le,
            ">" => Op::Gt,
            ">=" | "!<" => Op::Ge,
            _ => return None,
        })
    }
    fn flip(self) -> Op {
        match self {
            Op::Lt => Op::Gt,
            Op::Le => Op::Ge,
            Op::Gt => Op::Lt,
            Op::Ge => Op::Le,
            other => other,
        }
    }
    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Op::Eq => ord == Equal,
            Op::Ne => ord != Equal,
            Op::Lt => ord == Less,
            Op::Le => ord != Greater,
            Op::Gt => ord == Greater,
            Op::Ge => ord != Less,
        }
    }
}

enum Pred {
    Cmp(Col, Op, SqlVal),
    /// `<col> <op> DB_ID(<name>)`: the id is looked up when the rows are known.
    CmpDbId(Col, Op, SqlVal),
    IsNull(Col, bool),
}

/// Token cursor for the session query.
struct Parser<'a> {
    toks: &'a [Tok],
    pos: usize,
    params: &'a [(String, SqlVal)],
    /// DECLAREd variables (lower-case name without `@`) and their converted values.
    vars: HashMap<String, SqlVal>,
    spid: i16,
    /// The FROM clause, once parsed.
    scope: Vec<TableRef>,
}

impl<'a> Parser<'a> {
    fn new(toks: &'a [Tok], params: &'a [(String, SqlVal)], spid: i16) -> Self {
        Parser {
            toks,
            pos: 0,
            params,
            vars: HashMap::new(),
            spid,
            scope: Vec::new(),
        }
    }
    fn peek(&self) -> Option<&'a Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<&'a Tok> {
        let t = self.toks.get(self.pos);
        self.pos += 1;
        t
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek().is_some_and(|t| t.is_kw(kw)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn eat_sym(&mut self, sym: &str) -> bool {
        if self.peek().is_some_and(|t| t.is_sym(sym)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn unexpected(&self) -> SqlError {
        match self.peek() {
            Some(t) => SqlError::syntax(&t.text()),
            None => SqlError::new(
                102,
                1,
                15,
                "Incorrect syntax near the end of the statement.".to_string(),
            ),
        }
    }
    fn expect_kw(&mut self, kw: &str) -> Result<(), SqlError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// A value operand: parameter, variable, @@SPID, literal or NULL.
    fn value(&mut self) -> Result<Option<SqlVal>, SqlError> {
        let Some(t) = self.peek() else {
            return Ok(None);
        };
        let v = match t {
            Tok::Var(name) => match self.vars.get(name) {
                Some(v) => v.clone(),
                None => match self
                    .params
                    .iter()
                    .find(|(p, _)| p.trim_start_matches('@').eq_ignore_ascii_case(name))
                {
                    Some((_, v)) => v.clone(),
                    None => {
                        return Err(SqlError::new(
                            137,
                            2,
                            15,
                            format!("Must declare the scalar variable \"@{name}\"."),
                        ));
                    }
                },
            },
            Tok::Global(g) if g == "spid" => SqlVal::Int(self.spid as i64),
            Tok::Global(g) => {
                return Err(SqlError::standin(format!("@@{g} is not supported")));
            }
            Tok::Str(s) => SqlVal::Str(s.clone()),
            Tok::Num(n) => SqlVal::Int(*n),
            Tok::Ident(k) if k == "null" => SqlVal::Null,
            Tok::Sym(s) if s == "-" => {
                if let Some(Tok::Num(n)) = self.toks.get(self.pos + 1) {
                    self.pos += 1;
                    SqlVal::Int(-n)
                } else {
                    return Ok(None);
                }
            }
            _ => return Ok(None),
        };
        self.pos += 1;
        Ok(Some(v))
    }

    /// A multi-part name `a[.b[.c ...]]`, as its parts.
    fn multipart(&mut self) -> Option<Vec<String>> {
        let Some(Tok::Ident(first)) = self.peek() else {
            return None;
        };
        self.pos += 1;
        let mut parts = vec![first.clone()];
        while self.peek().is_some_and(|t| t.is_sym(".")) {
            match self.toks.get(self.pos + 1) {
                Some(Tok::Ident(n)) => {
                    parts.push(n.clone());
                    self.pos += 2;
                }
                _ => break,
            }
        }
        Some(parts)
    }

    /// A column expression: `[qualifier.]column` or `DB_NAME(<column>)`; `None` if the next
    /// token cannot start one.
    fn raw_expr(&mut self) -> Result<Option<RawExpr>, SqlError> {
        let Some(parts) = self.multipart() else {
            return Ok(None);
        };
        if !self.eat_sym("(") {
            return Ok(Some(RawExpr::Column(parts)));
        }
        let function = parts.join(".");
        if function != "db_name" {
            return Err(SqlError::standin(format!(
                "functions ({function}(...)) are not supported; the only one simulated is \
                 DB_NAME(s.database_id)"
            )));
        }
        let Some(arg) = self.multipart() else {
            return Err(SqlError::standin(
                "DB_NAME is simulated only as DB_NAME(s.database_id)".to_string(),
            ));
        };
        if !self.eat_sym(")") {
            return Err(SqlError::standin(
                "DB_NAME is simulated only as DB_NAME(s.database_id)".to_string(),
            ));
        }
        Ok(Some(RawExpr::DbName(arg)))
    }

    /// Binds a column name to the FROM clause, as SQL Server does: a qualified name needs a
    /// table exposed under that qualifier (else 4104), an unqualified one must belong to
    /// exactly one of the tables (else 207 or 209); the column must exist in the real view
    /// (else 207).
    fn bind_column(&self, parts: &[String]) -> Result<(View, &'static str), SqlError> {
        let Some((name, qualifier)) = parts.split_last() else {
            return Err(self.unexpected());
        };
        let invalid = || SqlError::new(207, 1, 16, format!("Invalid column name '{name}'."));
        if qualifier.is_empty() {
            let hits: Vec<(View, &'static str)> = self
                .scope
                .iter()
                .filter_map(|t| t.view.column(name).map(|c| (t.view, c)))
                .collect();
            return match hits.as_slice() {
                [] => Err(invalid()),
                [hit] => Ok(*hit),
                _ => Err(SqlError::new(
                    209,
                    1,
                    16,
                    format!("Ambiguous column name '{name}'."),
                )),
            };
        }
        let table = self
            .scope
            .iter()
            .find(|t| t.exposes(qualifier))
            .ok_or_else(|| {
                SqlError::new(
                    4104,
                    1,
                    16,
                    format!(
                        "The multi-part identifier \"{}\" could not be bound.",
                        parts.join(".")
                    ),
                )
            })?;
        let column = table.view.column(name).ok_or_else(invalid)?;
        Ok((table.view, column))
    }

    fn resolve(&self, e: &RawExpr) -> Result<Col, SqlError> {
        match e {
            RawExpr::Column(parts) => {
                let (view, name) = self.bind_column(parts)?;
                Col::of(view, name)
            }
            RawExpr::DbName(parts) => match self.bind_column(parts)? {
                (View::Sessions, "database_id") => Ok(Col::DatabaseName),
                _ => Err(SqlError::standin(
                    "DB_NAME is simulated only as DB_NAME(s.database_id)".to_string(),
                )),
            },
        }
    }

    /// `DECLARE @a type[(n)] [= value] [, ...]`
    fn declare(&mut self) -> Result<(), SqlError> {
        loop {
            let Some(Tok::Var(name)) = self.next().cloned() else {
                self.pos -= 1;
                return Err(self.unexpected());
            };
            self.eat_kw("as");
            let Some(Tok::Ident(ty)) = self.next().cloned() else {
                self.pos -= 1;
                return Err(self.unexpected());
            };
            if self.eat_sym("(") {
                while !self.eat_sym(")") {
                    if self.next().is_none() {
                        return Err(self.unexpected());
                    }
                }
            }
            let value = if self.eat_sym("=") {
                match self.value()? {
                    Some(v) => convert_declared(v, &ty)?,
                    None => {
                        return Err(SqlError::standin(format!(
                            "DECLARE @{name} must be initialised from a parameter or a literal"
                        )));
                    }
                }
            } else {
                SqlVal::Null
            };
            self.vars.insert(name, value);
            if !self.eat_sym(",") {
                return Ok(());
            }
        }
    }

    /// `<select item> [, ...]`: each a column expression with an optional `[AS] alias`.
    fn select_list(&mut self) -> Result<Vec<(RawExpr, Option<String>)>, SqlError> {
        let mut items = Vec::new();
        loop {
            let unsupported = |what: String| {
                SqlError::standin(format!(
                    "{what} is not supported; the stand-in answers SELECT 1, SELECT @@SPID, \
                     SELECT DATEDIFF(minute, GETUTCDATE(), GETDATE()) and the session query \
                     SELECT {EXPECTED_SELECT} {EXPECTED_JOIN} ..."
                ))
            };
            match self.peek() {
                Some(t) if t.is_sym("*") => return Err(unsupported("SELECT *".to_string())),
                Some(t) if t.is_kw("top") || t.is_kw("distinct") => {
                    return Err(unsupported(format!("SELECT {}", t.text().to_uppercase())));
                }
                _ => {}
            }
            let Some(expr) = self.raw_expr()? else {
                let what = match self.peek() {
                    Some(t) => format!("the select list item {}", t.text()),
                    None => "an empty select list".to_string(),
                };
                return Err(unsupported(what));
            };
            let alias = if self.eat_kw("as") {
                match self.next() {
                    Some(Tok::Ident(alias)) => Some(alias.clone()),
                    _ => {
                        self.pos -= 1;
                        return Err(self.unexpected());
                    }
                }
            } else {
                match self.peek() {
                    Some(Tok::Ident(alias)) if alias != "from" => {
                        self.pos += 1;
                        Some(alias.clone())
                    }
                    _ => None,
                }
            };
            items.push((expr, alias));
            if !self.eat_sym(",") {
                return Ok(items);
            }
        }
    }

    /// `[db.]sys.<view> [[AS] alias] [WITH (hints)]`
    fn table_source(&mut self) -> Result<TableRef, SqlError> {
        let Some(parts) = self.multipart() else {
            return Err(match self.peek() {
                Some(t) if t.is_sym("(") => {
                    SqlError::standin("derived tables are not supported".to_string())
                }
                _ => self.unexpected(),
            });
        };
        let view = match parts.as_slice() {
            [.., sys, v] if parts.len() <= 3 && sys == "sys" && v == "dm_exec_sessions" => {
                View::Sessions
            }
            [.., sys, v] if parts.len() <= 3 && sys == "sys" && v == "dm_exec_connections" => {
                View::Connections
            }
            [v] if v == "dm_exec_sessions" || v == "dm_exec_connections" => {
                return Err(SqlError::new(
                    208,
                    1,
                    16,
                    format!("Invalid object name '{v}'."),
                ));
            }
            _ => {
                return Err(SqlError::standin(format!(
                    "only sys.dm_exec_sessions and sys.dm_exec_connections are simulated, not {}",
                    parts.join(".")
                )));
            }
        };
        let alias = if self.eat_kw("as") {
            match self.next() {
                Some(Tok::Ident(alias)) => Some(alias.clone()),
                _ => {
                    self.pos -= 1;
                    return Err(self.unexpected());
                }
            }
        } else {
            match self.peek() {
                Some(Tok::Ident(alias)) if !NOT_AN_ALIAS.contains(&alias.as_str()) => {
                    self.pos += 1;
                    Some(alias.clone())
                }
                _ => None,
            }
        };
        if self.peek().is_some_and(|t| t.is_kw("with"))
            && self.toks.get(self.pos + 1).is_some_and(|t| t.is_sym("("))
        {
            self.pos += 2;
            while !self.eat_sym(")") {
                if self.next().is_none() {
                    return Err(self.unexpected());
                }
            }
        }
        Ok(TableRef { view, alias })
    }

    /// The ON clause of the join: exactly `c.session_id = s.session_id` (either way round)
    /// AND `c.parent_connection_id IS NULL`, in either order.
    fn join_condition(&mut self) -> Result<(), SqlError> {
        let mut terms = Vec::new();
        self.join_terms(&mut terms)?;
        let count = |t: JoinTerm| terms.iter().filter(|x| **x == t).count();
        if count(JoinTerm::Key) != 1 || count(JoinTerm::Parent) > 1 {
            return Err(join_shape(""));
        }
        if count(JoinTerm::Parent) == 0 {
            return Err(join_shape(
                " (without the parent_connection_id filter a real server returns one row per \
                 MARS connection, which the stand-in does not simulate)",
            ));
        }
        Ok(())
    }

    /// `<term> [AND <term> ...]`, a term being one of the two join conditions or a
    /// parenthesised conjunction of them.
    fn join_terms(&mut self, terms: &mut Vec<JoinTerm>) -> Result<(), SqlError> {
        let key = [
            (View::Connections, "session_id"),
            (View::Sessions, "session_id"),
        ];
        loop {
            if self.eat_sym("(") {
                self.join_terms(terms)?;
                if !self.eat_sym(")") {
                    return Err(self.unexpected());
                }
            } else {
                let Some(left) = self.multipart() else {
                    return Err(join_shape(""));
                };
                let left = self.bind_column(&left)?;
                if self.eat_kw("is") {
                    if self.eat_kw("not") {
                        return Err(join_shape(""));
                    }
                    self.expect_kw("null")?;
                    if left != (View::Connections, "parent_connection_id") {
                        return Err(join_shape(""));
                    }
                    terms.push(JoinTerm::Parent);
                } else if self.eat_sym("=") {
                    let Some(right) = self.multipart() else {
                        return Err(join_shape(""));
                    };
                    let right = self.bind_column(&right)?;
                    if !([left, right] == key || [right, left] == key) {
                        return Err(join_shape(""));
                    }
                    terms.push(JoinTerm::Key);
                } else {
                    return Err(join_shape(""));
                }
            }
            if self.peek().is_some_and(|t| t.is_kw("or")) {
                return Err(join_shape(" (OR is not supported)"));
            }
            if !self.eat_kw("and") {
                return Ok(());
            }
        }
    }

    fn predicate(&mut self) -> Result<Vec<Pred>, SqlError> {
        if self.eat_sym("(") {
            let preds = self.conjunction()?;
            if !self.eat_sym(")") {
                return Err(self.unexpected());
            }
            return Ok(preds);
        }
        if self.peek().is_some_and(|t| t.is_kw("not")) {
            return Err(SqlError::standin("NOT is not supported".to_string()));
        }
        // DB_ID(...) op column
        if let Some(name) = self.db_id_call()? {
            let op = self
                .peek()
                .and_then(Op::parse)
                .ok_or_else(|| self.unexpected())?;
            self.pos += 1;
            let expr = self.raw_expr()?.ok_or_else(|| {
                SqlError::standin("a predicate must compare a column with a value".to_string())
            })?;
            let col = self.resolve(&expr)?;
            return db_id_pred(col, op.flip(), name);
        }
        // value op column
        if let Some(v) = self.value()? {
            let op = self
                .peek()
                .and_then(Op::parse)
                .ok_or_else(|| self.unexpected())?;
            self.pos += 1;
            let expr = self.raw_expr()?.ok_or_else(|| {
                SqlError::standin("a predicate must compare a column with a value".to_string())
            })?;
            let col = self.resolve(&expr)?;
            return Ok(vec![Pred::Cmp(col, op.flip(), bind(col, v)?)]);
        }
        let expr = self.raw_expr()?.ok_or_else(|| self.unexpected())?;
        let col = self.resolve(&expr)?;
        if self.eat_kw("is") {
            let negated = self.eat_kw("not");
            self.expect_kw("null")?;
            return Ok(vec![Pred::IsNull(col, !negated)]);
        }
        let Some(op) = self.peek().and_then(Op::parse) else {
            return Err(match self.peek() {
                Some(Tok::Ident(k)) if ["in", "like", "between"].contains(&k.as_str()) => {
                    SqlError::standin(format!("{} is not supported", k.to_uppercase()))
                }
                _ => self.unexpected(),
            });
        };
        self.pos += 1;
        if let Some(name) = self.db_id_call()? {
            return db_id_pred(col, op, name);
        }
        let v = match self.value()? {
            Some(v) => v,
            None => {
                return Err(match self.peek() {
                    Some(Tok::Ident(_)) => SqlError::standin(
                        "a predicate must compare a column with a value (no column-to-column \
                         comparisons, CAST or functions other than DB_NAME(s.database_id))"
                            .to_string(),
                    ),
                    _ => self.unexpected(),
                });
            }
        };
        Ok(vec![Pred::Cmp(col, op, bind(col, v)?)])
    }

    /// `DB_ID(<value>)`, the value a string (the database name) or NULL; `None` if the next
    /// token is not `DB_ID`.
    fn db_id_call(&mut self) -> Result<Option<SqlVal>, SqlError> {
        if !(self.peek().is_some_and(|t| t.is_kw("db_id"))
            && self.toks.get(self.pos + 1).is_some_and(|t| t.is_sym("(")))
        {
            return Ok(None);
        }
        self.pos += 2;
        let shape = || {
            SqlError::standin(
                "DB_ID is simulated only as DB_ID(@Pn) or DB_ID('name') with a string (a \
                 database name), compared with s.authenticating_database_id"
                    .to_string(),
            )
        };
        let name = match self.value()? {
            Some(v @ (SqlVal::Str(_) | SqlVal::Null)) => v,
            _ => return Err(shape()),
        };
        if !self.eat_sym(")") {
            return Err(shape());
        }
        Ok(Some(name))
    }

    fn conjunction(&mut self) -> Result<Vec<Pred>, SqlError> {
        let mut preds = self.predicate()?;
        loop {
            if self.eat_kw("and") {
                preds.extend(self.predicate()?);
            } else if self.peek().is_some_and(|t| t.is_kw("or")) {
                return Err(SqlError::standin("OR is not supported".to_string()));
            } else {
                return Ok(preds);
            }
        }
    }

    /// `ORDER BY <item> [ASC|DESC] [, ...]`: an item is a result column name or a column.
    fn order_by(&mut self) -> Result<Vec<(Col, bool)>, SqlError> {
        let mut order = Vec::new();
        loop {
            if let Some(Tok::Num(n)) = self.peek() {
                return Err(SqlError::standin(format!(
                    "ORDER BY {n} (a select list position) is not supported"
                )));
            }
            let expr = self.raw_expr()?.ok_or_else(|| self.unexpected())?;
            let result_column = match &expr {
                RawExpr::Column(parts) if parts.len() == 1 => SELECT_LIST
                    .iter()
                    .find(|(_, name)| *name == parts[0])
                    .map(|(col, _)| *col),
                _ => None,
            };
            let col = match result_column {
                Some(col) => col,
                None => self.resolve(&expr)?,
            };
            let desc = if self.eat_kw("desc") {
                true
            } else {
                self.eat_kw("asc");
                false
            };
            order.push((col, desc));
            if !self.eat_sym(",") {
                return Ok(order);
            }
        }
    }
}

/// `<col> <op> DB_ID(name)`: only `s.authenticating_database_id` is compared with a database
/// id.
fn db_id_pred(col: Col, op: Op, name: SqlVal) -> Result<Vec<Pred>, SqlError> {
    if col != Col::AuthDbId {
        return Err(SqlError::standin(format!(
            "DB_ID(...) is simulated only compared with s.authenticating_database_id, not {}",
            col.sql()
        )));
    }
    Ok(vec![Pred::CmpDbId(col, op, name)])
}

/// Converts a value to the column's type, as SQL Server would for the comparison.
fn bind(col: Col, v: SqlVal) -> Result<SqlVal, SqlError> {
    match (col.kind(), v) {
        (_, SqlVal::Null) => Ok(SqlVal::Null),
        (Kind::Int, SqlVal::Int(i)) => Ok(SqlVal::Int(i)),
        (Kind::Int, SqlVal::Str(s)) => s.trim().parse().map(SqlVal::Int).map_err(|_| {
            SqlError::new(
                245,
                1,
                16,
                format!(
                    "Conversion failed when converting the nvarchar value '{s}' to data type int."
                ),
            )
        }),
        (Kind::Str, SqlVal::Str(s)) => Ok(SqlVal::Str(s)),
        (Kind::Time, v @ (SqlVal::Time(_) | SqlVal::Instant { .. })) => Ok(v),
        (Kind::Time, SqlVal::Str(s)) => parse_datetime_str(&s, 3, false, true),
        (kind, v) => Err(SqlError::standin(format!(
            "cannot compare a {kind:?} column ({}) with {v}",
            col.sql()
        ))),
    }
}

/// A DECLAREd variable's value, converted to its declared type.
fn convert_declared(v: SqlVal, ty: &str) -> Result<SqlVal, SqlError> {
    match (ty, v) {
        (_, SqlVal::Null) => Ok(SqlVal::Null),
        ("datetime" | "smalldatetime", SqlVal::Str(s)) => parse_datetime_str(&s, 3, false, true),
        ("datetime2", SqlVal::Str(s)) => parse_datetime_str(&s, 7, false, false),
        ("datetimeoffset", SqlVal::Str(s)) => parse_datetime_str(&s, 7, true, false),
        // datetimeoffset → a type without a zone keeps the local date and time.
        (
            "datetime" | "smalldatetime" | "datetime2" | "date",
            SqlVal::Instant {
                utc,
                offset_minutes,
            },
        ) => convert_declared(
            SqlVal::Time(utc + ChronoDuration::minutes(offset_minutes as i64)),
            ty,
        ),
        ("datetime", SqlVal::Time(t)) => {
            let (days, ticks) = to_sql_datetime(t);
            Ok(SqlVal::Time(from_sql_datetime(days, ticks)))
        }
        ("smalldatetime" | "datetime2", SqlVal::Time(t)) => Ok(SqlVal::Time(t)),
        ("date", SqlVal::Time(t)) => Ok(SqlVal::Time(t.date().and_hms_opt(0, 0, 0).unwrap())),
        // A value without a zone → datetimeoffset gets +00:00.
        ("datetimeoffset", SqlVal::Time(t)) => Ok(SqlVal::Instant {
            utc: t,
            offset_minutes: 0,
        }),
        ("datetimeoffset", v @ SqlVal::Instant { .. }) => Ok(v),
        ("int" | "smallint" | "bigint" | "tinyint" | "bit", SqlVal::Int(i)) => Ok(SqlVal::Int(i)),
        ("int" | "smallint" | "bigint" | "tinyint", SqlVal::Str(s)) => {
            bind(Col::SessionId, SqlVal::Str(s))
        }
        ("nvarchar" | "varchar" | "sysname" | "nchar" | "char", SqlVal::Str(s)) => {
            Ok(SqlVal::Str(s))
        }
        (ty, v) => Err(SqlError::standin(format!("cannot DECLARE a {ty} from {v}"))),
    }
}

/// String → date/time as SQL Server converts it: `YYYY-MM-DD`, `YYYYMMDD`, optionally `T` or
/// a space and `HH:MM[:SS[.f]]` with at most `max_fraction` digits; a zone (`Z`, `±HH:MM`)
/// only if `zone` (the target is datetimeoffset: the result is then an instant, +00:00 when
/// the string has no zone).
fn parse_datetime_str(
    s: &str,
    max_fraction: usize,
    zone: bool,
    legacy_range: bool,
) -> Result<SqlVal, SqlError> {
    let fail = || {
        SqlError::new(
            241,
            1,
            16,
            "Conversion failed when converting date and/or time from character string.".to_string(),
        )
    };
    let s = s.trim();
    let (body, offset_minutes) = split_zone(s);
    if offset_minutes.is_some() && !zone {
        return Err(fail());
    }
    if let Some(dot) = body.rfind('.') {
        let fraction = &body[dot + 1..];
        if fraction.len() > max_fraction || !fraction.chars().all(|c| c.is_ascii_digit()) {
            return Err(fail());
        }
    }
    let formats = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        "%Y%m%d %H:%M:%S%.f",
    ];
    let parsed = formats
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(body, f).ok())
        .or_else(|| {
            ["%Y-%m-%d", "%Y%m%d"]
                .iter()
                .find_map(|f| NaiveDate::parse_from_str(body, f).ok())
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .ok_or_else(fail)?;
    if legacy_range && parsed.date() < NaiveDate::from_ymd_opt(1753, 1, 1).unwrap() {
        return Err(SqlError::new(
            242,
            3,
            16,
            "The conversion of a nvarchar data type to a datetime data type resulted in an out-of-range value."
                .to_string(),
        ));
    }
    if !zone {
        return Ok(SqlVal::Time(parsed));
    }
    let offset_minutes = offset_minutes.unwrap_or(0);
    Ok(SqlVal::Instant {
        utc: parsed - ChronoDuration::minutes(offset_minutes),
        offset_minutes: offset_minutes as i16,
    })
}

/// Splits a trailing `Z` / `±HH:MM` zone off a date-time string.
fn split_zone(s: &str) -> (&str, Option<i64>) {
    if let Some(body) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return (body, Some(0));
    }
    if s.len() > 6 && s.contains(':') {
        let (body, tail) = s.split_at(s.len() - 6);
        let b = tail.as_bytes();
        if (b[0] == b'+' || b[0] == b'-')
            && b[3] == b':'
            && body.contains(':')
            && let (Ok(h), Ok(m)) = (tail[1..3].parse::<i64>(), tail[4..6].parse::<i64>())
        {
            let sign = if b[0] == b'-' { -1 } else { 1 };
            return (body.trim_end(), Some(sign * (h * 60 + m)));
        }
    }
    (s, None)
}

fn compare(a: &SqlVal, b: &SqlVal) -> Option<std::cmp::Ordering> {
    // A date/time without a zone compared with a datetimeoffset is taken as +00:00 (SQL
    // Server converts it to datetimeoffset), so both compare by their naive value.
    let naive = |v: &SqlVal| match v {
        SqlVal::Time(t) => Some(*t),
        SqlVal::Instant { utc, .. } => Some(*utc),
        _ => None,
    };
    match (a, b) {
        (SqlVal::Int(x), SqlVal::Int(y)) => Some(x.cmp(y)),
        (SqlVal::Str(x), SqlVal::Str(y)) => {
            // Case-insensitive, trailing spaces ignored (SQL_Latin1_General_CP1_CI_AS).
            let x = x.trim_end_matches(' ').to_lowercase();
            let y = y.trim_end_matches(' ').to_lowercase();
            Some(x.cmp(&y))
        }
        _ => Some(naive(a)?.cmp(&naive(b)?)),
    }
}

fn row_matches(preds: &[Pred], s: &FakeSession, env: &Env) -> bool {
    preds.iter().all(|p| match p {
        Pred::Cmp(col, op, v) => compare(&col.value(s, env), v).is_some_and(|o| op.holds(o)),
        Pred::CmpDbId(col, op, name) => {
            let id = match name {
                SqlVal::Str(name) => database_id(&env.databases, name),
                _ => None,
            };
            id.is_some_and(|id| {
                compare(&col.value(s, env), &SqlVal::Int(id)).is_some_and(|o| op.holds(o))
            })
        }
        Pred::IsNull(col, want_null) => (col.value(s, env) == SqlVal::Null) == *want_null,
    })
}

fn session_query(
    state: &Mutex<State>,
    spid: i16,
    toks: &[Tok],
    params: &[(String, SqlVal)],
    recorded: &str,
) -> Result<Outcome, SqlError> {
    let mut p = Parser::new(toks, params, spid);
    // DECLAREs, then the SELECT.
    loop {
        while p.eat_sym(";") {}
        if p.eat_kw("declare") {
            p.declare()?;
        } else {
            break;
        }
    }
    if !p.eat_kw("select") {
        return Err(match p.peek() {
            Some(t) => SqlError::syntax(&t.text()),
            None => p.unexpected(),
        });
    }
    let items = p.select_list()?;
    if !p.eat_kw("from") {
        return Err(SqlError::standin(format!(
            "a SELECT without FROM is supported only as SELECT 1, SELECT @@SPID or the clock \
             query; the session query is SELECT {EXPECTED_SELECT} {EXPECTED_JOIN} ..."
        )));
    }
    let sessions = p.table_source()?;
    if sessions.view != View::Sessions {
        return Err(SqlError::standin(format!(
            "the session query must be {EXPECTED_JOIN}"
        )));
    }
    p.scope.push(sessions);
    if p.eat_kw("left") {
        p.eat_kw("outer");
        p.expect_kw("join")?;
        let connections = p.table_source()?;
        if connections.view != View::Connections {
            return Err(SqlError::standin(format!(
                "the session query must be {EXPECTED_JOIN}"
            )));
        }
        p.scope.push(connections);
        p.expect_kw("on")?;
        p.join_condition()?;
    } else if let Some(t) = p.peek()
        && (t.is_sym(",")
            || ["join", "inner", "right", "full", "cross", "outer"]
                .iter()
                .any(|k| t.is_kw(k)))
    {
        return Err(SqlError::standin(format!(
            "only this join is simulated: {EXPECTED_JOIN}"
        )));
    }

    // Bind the select list now that the FROM clause is known.
    let mut selected = Vec::new();
    for (expr, alias) in &items {
        let col = p.resolve(expr)?;
        let name = alias.clone().unwrap_or_else(|| expr.default_name());
        selected.push((col, name, expr.text()));
    }
    let matches = selected.len() == SELECT_LIST.len()
        && selected
            .iter()
            .zip(SELECT_LIST.iter())
            .all(|((col, name, _), (want, want_name))| col == want && name == want_name);
    if !matches {
        let got: Vec<String> = selected
            .iter()
            .map(|(_, name, text)| {
                if *name == text.rsplit('.').next().unwrap_or_default() {
                    text.clone()
                } else if name.is_empty() {
                    format!("{text} (no column name)")
                } else {
                    format!("{text} AS {name}")
                }
            })
            .collect();
        return Err(SqlError::standin(format!(
            "the session query must select exactly {EXPECTED_SELECT} (in this order, same \
             result column names), got {}",
            got.join(", ")
        )));
    }

    let preds = if p.eat_kw("where") {
        p.conjunction()?
    } else {
        Vec::new()
    };
    let order = if p.eat_kw("order") {
        p.expect_kw("by")?;
        p.order_by()?
    } else {
        Vec::new()
    };
    while p.eat_sym(";") {}
    if let Some(t) = p.peek() {
        return Err(SqlError::standin(format!(
            "unexpected {} after the session query (one SELECT per request; no GROUP BY, \
             OPTION, UNION ...)",
            t.text()
        )));
    }

    let (table, hook, utc_offset) = {
        let st = lock(state);
        (
            st.sessions.values().cloned().collect::<Vec<_>>(),
            st.hook.clone(),
            ChronoDuration::minutes(st.utc_offset_minutes as i64),
        )
    };
    let table = match hook {
        Some(hook) => hook(recorded, &table).unwrap_or(table),
        None => table,
    };
    let env = {
        let mut st = lock(state);
        for s in &table {
            st.register_session_databases(s);
        }
        Env {
            utc_offset,
            databases: st.databases.clone(),
        }
    };
    let mut rows: Vec<FakeSession> = table
        .into_iter()
        .filter(|s| row_matches(&preds, s, &env))
        .collect();
    rows.sort_by(|a, b| {
        for (col, desc) in &order {
            let o = compare(&col.value(a, &env), &col.value(b, &env)).unwrap_or_else(|| {
                // NULLs sort first, as in SQL Server.
                let null_a = col.value(a, &env) == SqlVal::Null;
                let null_b = col.value(b, &env) == SqlVal::Null;
                null_b.cmp(&null_a)
            });
            let o = if *desc { o.reverse() } else { o };
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        a.session_id.cmp(&b.session_id)
    });

    let nvarchar = |name: &str, chars, nullable| ColDef {
        name: name.to_string(),
        ty: ColType::NVarChar(chars),
        nullable,
    };
    let cols = vec![
        ColDef {
            name: "session_id".to_string(),
            ty: ColType::SmallInt,
            nullable: false,
        },
        nvarchar("original_login_name", 128, false),
        nvarchar("login_name", 128, false),
        ColDef {
            name: "login_time".to_string(),
            ty: ColType::DateTime,
            nullable: false,
        },
        nvarchar("host_name", 128, true),
        nvarchar("program_name", 128, true),
        nvarchar("database_name", 128, true),
        nvarchar("client_net_address", 48, true),
        nvarchar("status", 30, false),
    ];
    let opt = |v: &Option<String>| v.clone().map_or(Cell::Null, Cell::Str);
    let rows = rows
        .iter()
        .map(|s| {
            vec![
                Cell::I16(s.session_id),
                Cell::Str(s.original_login_name.clone()),
                Cell::Str(s.login_name.clone()),
                Cell::DateTime(s.login_time.naive_utc() + utc_offset),
                opt(&s.host_name),
                opt(&s.program_name),
                opt(&s.database_name),
                opt(&s.client_net_address),
                Cell::Str(s.status.clone()),
            ]
        })
        .collect();
    Ok(Outcome::Rows { cols, rows })
}
