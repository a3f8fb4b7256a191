//! The activity query of the stand-in: what each user session is doing, from
//! `sys.dm_exec_sessions` (the last request's times), `sys.dm_exec_requests` (the running
//! request), `sys.dm_tran_session_transactions` joined to `sys.dm_tran_active_transactions`
//! (when its open transaction began) and `sys.dm_exec_sql_text` (the statement text).
//!
//! SQL Server answers it with an OUTER APPLY over an aggregate and a table-valued function,
//! which the stand-in does not parse. Instead it accepts exactly [`ACTIVITY_QUERY`] (compared
//! token by token, so whitespace, case and comments are free), with `@P1` the include-text
//! flag (a bit or int: 1 reads the text, 0 or NULL passes `dm_exec_sql_text` a NULL handle,
//! which reads nothing), and answers one row per user session (`is_user_process`) other than
//! the caller's, ordered by `session_id`, from the [`FakeSession`] fields:
//!
//! | column | type | from |
//! |---|---|---|
//! | `session_id` | smallint | `session_id` |
//! | `login_time` | datetime | `login_time` |
//! | `last_request_start_time` | datetime | `last_request_start_time`, else `login_time` (as a real server initialises it) |
//! | `last_request_end_time` | datetime NULL | `last_request_end_time` |
//! | `request_status`, `command` | nvarchar(30), nvarchar(32) NULL | [`FakeRequest`] `status`, `command` |
//! | `start_time` | datetime NULL | [`FakeRequest::start_time`] |
//! | `wait_type` | nvarchar(60) NULL | [`FakeRequest::wait_type`] |
//! | `blocking_session_id` | smallint NULL | [`FakeRequest::blocking_session_id`] (0: none) |
//! | `xact_start` | datetime NULL | `transaction_begin_time` |
//! | `query_text` | nvarchar(4000) NULL | [`FakeRequest::text`] when `@P1` = 1 |
//! | `now_local` | datetime | the stand-in's clock |
//!
//! Times are presented in the server's local time (UTC plus the UTC offset) like
//! `login_time`. A session without a request has NULL request columns (the LEFT JOIN); the
//! stand-in runs at most one request per session (no MARS), and a live connection's own
//! statements show as `status = 'running'` and its last request times, not as a request.
//! The real `text` column is nvarchar(max); tiberius reads both as a string.
//!
//! Any other statement naming `sys.dm_exec_requests`, `sys.dm_tran_*` or
//! `sys.dm_exec_sql_text` gets error 50000. The text mirrors the engine's query
//! (`src/terminate/sqlserver/activity.rs`); it has not been run against a real SQL Server.

use std::sync::Mutex;

use chrono::{DateTime, Duration as ChronoDuration, Utc};

use super::{Cell, ColDef, ColType, Outcome, SqlError, SqlVal, State, Tok, lock, tokenize};

/// The one activity query the stand-in answers.
pub(super) const ACTIVITY_QUERY: &str =
    "SELECT s.session_id, s.login_time, s.last_request_start_time,
    s.last_request_end_time, r.status AS request_status, r.command, r.start_time, r.wait_type,
    r.blocking_session_id, t.xact_start, q.text AS query_text, GETDATE() AS now_local
FROM sys.dm_exec_sessions AS s
LEFT JOIN sys.dm_exec_requests AS r ON r.session_id = s.session_id
OUTER APPLY (SELECT MIN(a.transaction_begin_time) AS xact_start
    FROM sys.dm_tran_session_transactions AS st
    JOIN sys.dm_tran_active_transactions AS a ON a.transaction_id = st.transaction_id
    WHERE st.session_id = s.session_id) AS t
OUTER APPLY sys.dm_exec_sql_text(CASE WHEN @P1 = 1 THEN r.sql_handle END) AS q
WHERE s.is_user_process = 1 AND s.session_id <> @@SPID
ORDER BY s.session_id, r.request_id";

/// The request a session is running: its row of `sys.dm_exec_requests`.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeRequest {
    /// `running`, `runnable`, `suspended` (waiting), `rollback` ...
    pub status: String,
    /// `SELECT`, `UPDATE`, `KILLED/ROLLBACK` (a KILLed session rolling back) ...
    pub command: String,
    /// In UTC, presented in the server's local time.
    pub start_time: DateTime<Utc>,
    /// `LCK_M_X` ...; `None` when it waits on nothing.
    pub wait_type: Option<String>,
    /// The session it waits on for a lock; 0 for none.
    pub blocking_session_id: i16,
    /// What `sys.dm_exec_sql_text(sql_handle)` gives.
    pub text: Option<String>,
}

/// Whether `toks` mentions a view only the activity query may read.
pub(super) fn mentions_activity_views(toks: &[Tok]) -> bool {
    toks.windows(3).any(|w| {
        w[0].is_kw("sys")
            && w[1].is_sym(".")
            && matches!(&w[2], Tok::Ident(v) if v == "dm_exec_requests"
                || v == "dm_exec_sql_text"
                || v.starts_with("dm_tran_"))
    })
}

/// Whether `toks` is the activity query.
pub(super) fn is_activity_query(toks: &[Tok]) -> bool {
    tokenize(ACTIVITY_QUERY).is_ok_and(|expected| expected == toks)
}

/// The refusal of any other statement on those views.
pub(super) fn refused() -> SqlError {
    SqlError::standin(
        "sys.dm_exec_requests, sys.dm_tran_* and sys.dm_exec_sql_text are simulated only in \
         the activity query (tds/activity.rs)"
            .into(),
    )
}

/// Answers the activity query for session `spid`.
pub(super) fn activity_query(
    state: &Mutex<State>,
    spid: i16,
    params: &[(String, SqlVal)],
) -> Result<Outcome, SqlError> {
    let include_text = match params
        .iter()
        .find(|(name, _)| name.trim_start_matches('@').eq_ignore_ascii_case("p1"))
    {
        Some((_, SqlVal::Int(flag))) => *flag == 1,
        Some((_, SqlVal::Null)) => false,
        _ => {
            return Err(SqlError::standin(
                "the activity query takes the include-text flag as the bit parameter @P1".into(),
            ));
        }
    };
    let st = lock(state);
    let offset = ChronoDuration::minutes(st.utc_offset_minutes as i64);
    let local = |t: DateTime<Utc>| Cell::DateTime(t.naive_utc() + offset);
    let local_opt = |t: Option<DateTime<Utc>>| t.map_or(Cell::Null, local);
    let text = |v: Option<&String>| v.map_or(Cell::Null, |s| Cell::Str(s.clone()));
    let now = Utc::now();
    let rows = st
        .sessions
        .values()
        .filter(|s| s.is_user_process && s.session_id != spid)
        .map(|s| {
            let r = s.request.as_ref();
            vec![
                Cell::I16(s.session_id),
                local(s.login_time),
                local(s.last_request_start_time.unwrap_or(s.login_time)),
                local_opt(s.last_request_end_time),
                text(r.map(|r| &r.status)),
                text(r.map(|r| &r.command)),
                local_opt(r.map(|r| r.start_time)),
                text(r.and_then(|r| r.wait_type.as_ref())),
                r.map_or(Cell::Null, |r| Cell::I16(r.blocking_session_id)),
                local_opt(s.transaction_begin_time),
                text(r.and_then(|r| r.text.as_ref()).filter(|_| include_text)),
                local(now),
            ]
        })
        .collect();
    let col = |name: &str, ty: ColType, nullable: bool| ColDef {
        name: name.into(),
        ty,
        nullable,
    };
    Ok(Outcome::Rows {
        cols: vec![
            col("session_id", ColType::SmallInt, false),
            col("login_time", ColType::DateTime, false),
            col("last_request_start_time", ColType::DateTime, false),
            col("last_request_end_time", ColType::DateTime, true),
            col("request_status", ColType::NVarChar(30), true),
            col("command", ColType::NVarChar(32), true),
            col("start_time", ColType::DateTime, true),
            col("wait_type", ColType::NVarChar(60), true),
            col("blocking_session_id", ColType::SmallInt, true),
            col("xact_start", ColType::DateTime, true),
            col("query_text", ColType::NVarChar(4000), true),
            col("now_local", ColType::DateTime, false),
        ],
        rows,
    })
}
