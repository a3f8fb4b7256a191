//! What each SQL Server user session is doing, for the listing's impact columns and the
//! selector's state fields: `sys.dm_exec_sessions` for the last request's times,
//! `sys.dm_exec_requests` for the running request (what it waits on, who blocks it), and
//! `sys.dm_tran_session_transactions` with `sys.dm_tran_active_transactions` for when its
//! open transaction began. One round trip for every user session.
//!
//! SQL Server has no "idle in transaction (aborted)" state: a transaction doomed by an error
//! (`XACT_STATE() = -1`) is visible only to its own session, so such a session lists as
//! `idle_in_transaction`.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use tiberius::Row;

use super::{Connection, Row9, query_error};
use crate::select::{Seen, SessionState};
use crate::terminate::EngineError;
use crate::terminate::listing::Impact;

/// Every user session but sever's own, one row per request (MARS can run several), with its
/// oldest open transaction. `dm_exec_sql_text` reads the statement text only when `@P1` is
/// 1 (a NULL handle reads nothing): it can hold personal data. All times are the server's
/// local time, `now_local` included, so durations are the server's own.
pub(super) const ACTIVITY: &str = "SELECT s.session_id, s.login_time, s.last_request_start_time, \
    s.last_request_end_time, r.status AS request_status, r.command, r.start_time, r.wait_type, \
    r.blocking_session_id, t.xact_start, q.text AS query_text, GETDATE() AS now_local \
    FROM sys.dm_exec_sessions AS s \
    LEFT JOIN sys.dm_exec_requests AS r ON r.session_id = s.session_id \
    OUTER APPLY (SELECT MIN(a.transaction_begin_time) AS xact_start \
        FROM sys.dm_tran_session_transactions AS st \
        JOIN sys.dm_tran_active_transactions AS a ON a.transaction_id = st.transaction_id \
        WHERE st.session_id = s.session_id) AS t \
    OUTER APPLY sys.dm_exec_sql_text(CASE WHEN @P1 = 1 THEN r.sql_handle END) AS q \
    WHERE s.is_user_process = 1 AND s.session_id <> @@SPID \
    ORDER BY s.session_id, r.request_id";

/// A request the session is running, times server-local.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    /// `running`, `runnable`, `suspended`, `rollback` ...
    pub status: String,
    /// `SELECT`, `UPDATE`, `KILLED/ROLLBACK` ...
    pub command: String,
    pub start_time: Option<NaiveDateTime>,
    /// `LCK_M_X`, `PAGEIOLATCH_SH` ...
    pub wait_type: Option<String>,
}

/// One session's activity as read, times server-local.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Activity {
    pub login_time: Option<NaiveDateTime>,
    pub last_request_start: Option<NaiveDateTime>,
    pub last_request_end: Option<NaiveDateTime>,
    /// Its first request, if it runs one.
    pub request: Option<Request>,
    /// The sessions its requests wait on.
    pub blocked_by: Vec<i64>,
    pub xact_start: Option<NaiveDateTime>,
    pub query: Option<String>,
}

/// What the activity query read: by session id, and the server's clock (local time) when
/// it read it, `None` when no user session answered.
pub(super) type Activities = (BTreeMap<i16, Activity>, Option<NaiveDateTime>);

/// Reads every user session's activity in one round trip.
pub(super) async fn read(
    client: &mut Connection,
    include_query: bool,
) -> Result<Activities, EngineError> {
    let rows = client
        .query(ACTIVITY, &[&include_query])
        .await
        .map_err(query_error)?
        .into_first_result()
        .await
        .map_err(query_error)?;
    let mut by_id: BTreeMap<i16, Activity> = BTreeMap::new();
    let mut now = None;
    for row in &rows {
        let (id, activity, blocker, at) = decode(row)?;
        now = now.or(at);
        let entry = by_id.entry(id).or_insert(activity.clone());
        // A second request (MARS) adds only whom it waits on.
        if let Some(blocker) = blocker.filter(|b| !entry.blocked_by.contains(b)) {
            entry.blocked_by.push(blocker);
        }
        if entry.request.is_none() {
            entry.request = activity.request;
        }
    }
    Ok((by_id, now))
}

/// One row: the session id, its activity, the session its request waits on, and the clock.
fn decode(row: &Row) -> Result<(i16, Activity, Option<i64>, Option<NaiveDateTime>), EngineError> {
    let time = |i: usize| row.try_get::<NaiveDateTime, _>(i).map_err(query_error);
    let text = |i: usize| {
        row.try_get::<&str, _>(i)
            .map(|v| v.map(str::to_owned))
            .map_err(query_error)
    };
    let id = row
        .try_get::<i16, _>(0)
        .map_err(query_error)?
        .ok_or_else(|| EngineError::Query("session_id is NULL".into()))?;
    // A LEFT JOIN without a request gives NULLs: no request runs.
    let request = match (text(4)?, text(5)?) {
        (Some(status), Some(command)) => Some(Request {
            status,
            command,
            start_time: time(6)?,
            wait_type: text(7)?.filter(|w| !w.is_empty()),
        }),
        _ => None,
    };
    // 0 is no blocker; negative ids are not sessions (-2 an orphaned distributed
    // transaction, -3 deferred recovery, -4/-5 latch owners); a session shown blocking
    // itself (parallel or I/O waits) is not a lock wait on another.
    let blocker = row
        .try_get::<i16, _>(8)
        .map_err(query_error)?
        .filter(|b| *b > 0 && *b != id)
        .map(i64::from);
    let activity = Activity {
        login_time: time(1)?,
        last_request_start: time(2)?,
        last_request_end: time(3)?,
        request,
        blocked_by: blocker.into_iter().collect(),
        xact_start: time(9)?,
        query: text(10)?,
    };
    Ok((id, activity, blocker, time(11)?))
}

/// The selector's state for a session: running a request is `active`; `sleeping` is
/// `idle_in_transaction` with a transaction open and `idle` without. `None` for the states
/// no selector names (`dormant`: reset by a connection pool; `preconnect`: logging in).
pub(super) fn state(status: &str, activity: &Activity) -> Option<SessionState> {
    if activity.request.is_some() || status.eq_ignore_ascii_case("running") {
        Some(SessionState::Active)
    } else if status.eq_ignore_ascii_case("sleeping") {
        Some(match activity.xact_start {
            Some(_) => SessionState::IdleInTransaction,
            None => SessionState::Idle,
        })
    } else {
        None
    }
}

/// Whether the session is already rolling back: `KILL`ed (its request's command is
/// `KILLED/ROLLBACK`) or its request rolling back. `KILL` again would only report progress.
pub(super) fn rolling_back(row: &Row9, activity: Option<&Activity>) -> bool {
    let request = activity.and_then(|a| a.request.as_ref());
    row.status.eq_ignore_ascii_case("rollback")
        || request.is_some_and(|r| {
            r.status.eq_ignore_ascii_case("rollback")
                || r.command.eq_ignore_ascii_case("KILLED/ROLLBACK")
        })
}

/// What the selector reads about a session's state, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StateFacts {
    pub state: Seen<SessionState>,
    pub state_since: Seen<DateTime<Utc>>,
    pub xact_start: Seen<DateTime<Utc>>,
}

impl StateFacts {
    /// Nothing read (the session ended, or its id was reused, between the two queries):
    /// every state field unknown, so the selector spares it.
    pub const UNKNOWN: StateFacts = StateFacts {
        state: Seen::Unknown,
        state_since: Seen::Unknown,
        xact_start: Seen::Unknown,
    };
}

/// The impact columns and the state facts of `row` from its `activity` (`None` when the
/// activity query did not see the same session), converting server-local times to UTC.
pub(super) fn impact(
    row: &Row9,
    activity: Option<&Activity>,
    offset: chrono::Duration,
    include_query: bool,
) -> (Impact, Option<SessionState>, StateFacts) {
    // Session ids are reused: the activity is this session's only if it logged in then too.
    let Some(a) = activity.filter(|a| a.login_time == Some(row.login_time)) else {
        return (Impact::default(), None, StateFacts::UNKNOWN);
    };
    let utc = |t: Option<NaiveDateTime>| t.map(|t| (t - offset).and_utc());
    let state = state(&row.status, a);
    let request_start = a.request.as_ref().and_then(|r| r.start_time);
    let state_since = match state {
        Some(SessionState::Active) => utc(request_start.or(a.last_request_start)),
        // Idle since its last request ended; a session that never ran one, since it logged in.
        _ => utc(a.last_request_end.or(Some(row.login_time))),
    };
    let xact_start = utc(a.xact_start);
    let impact = Impact {
        state_since,
        xact_start,
        query_start: utc(request_start.or(a.last_request_start)),
        wait_event: a.request.as_ref().and_then(|r| r.wait_type.clone()),
        blocked_by: a.blocked_by.clone(),
        blocking: 0,
        backend_type: None,
        query: a.query.clone().filter(|_| include_query),
        statement_id: None,
    };
    let facts = StateFacts {
        state: state.map_or(Seen::Absent, Seen::Known),
        state_since: state_since.map_or(Seen::Unknown, Seen::Known),
        xact_start: xact_start.map_or(Seen::Absent, Seen::Known),
    };
    (impact, state, facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        s.parse().unwrap()
    }

    fn row(status: &str) -> Row9 {
        Row9 {
            session_id: 60,
            original_login_name: "app".into(),
            login_time: at("2026-01-01T10:00:00"),
            program_name: None,
            host_name: None,
            database_name: None,
            client_net_address: None,
            status: status.into(),
        }
    }

    fn request(status: &str, command: &str) -> Request {
        Request {
            status: status.into(),
            command: command.into(),
            start_time: Some(at("2026-01-01T11:00:05")),
            wait_type: Some("LCK_M_X".into()),
        }
    }

    fn activity() -> Activity {
        Activity {
            login_time: Some(at("2026-01-01T10:00:00")),
            last_request_start: Some(at("2026-01-01T10:59:00")),
            last_request_end: Some(at("2026-01-01T10:59:30")),
            ..Default::default()
        }
    }

    #[test]
    fn states_follow_the_request_and_the_transaction() {
        let idle = activity();
        assert_eq!(state("sleeping", &idle), Some(SessionState::Idle));
        let open = Activity {
            xact_start: Some(at("2026-01-01T10:58:00")),
            ..activity()
        };
        assert_eq!(
            state("sleeping", &open),
            Some(SessionState::IdleInTransaction)
        );
        let running = Activity {
            request: Some(request("suspended", "UPDATE")),
            ..open.clone()
        };
        assert_eq!(state("running", &running), Some(SessionState::Active));
        assert_eq!(state("dormant", &idle), None);
        assert_eq!(state("preconnect", &idle), None);
    }

    #[test]
    fn times_are_converted_from_server_local_and_taken_from_the_right_view() {
        let offset = chrono::Duration::hours(-5);
        let running = Activity {
            request: Some(request("suspended", "UPDATE")),
            xact_start: Some(at("2026-01-01T11:00:00")),
            blocked_by: vec![61],
            query: Some("UPDATE t SET x = 1".into()),
            ..activity()
        };
        let (shown, state, facts) = impact(&row("running"), Some(&running), offset, true);
        assert_eq!(state, Some(SessionState::Active));
        let utc = |s: &str| (at(s) + chrono::Duration::hours(5)).and_utc();
        assert_eq!(shown.state_since, Some(utc("2026-01-01T11:00:05")));
        assert_eq!(shown.query_start, Some(utc("2026-01-01T11:00:05")));
        assert_eq!(shown.xact_start, Some(utc("2026-01-01T11:00:00")));
        assert_eq!(shown.wait_event.as_deref(), Some("LCK_M_X"));
        assert_eq!(shown.blocked_by, vec![61]);
        assert_eq!(shown.query.as_deref(), Some("UPDATE t SET x = 1"));
        assert_eq!(facts.state, Seen::Known(SessionState::Active));
        // Not asked for: never shown, whatever the server sent.
        assert_eq!(impact_of(&running, offset, false).query, None);

        let idle = activity();
        let (shown, _, facts) = impact(&row("sleeping"), Some(&idle), offset, false);
        assert_eq!(shown.state_since, Some(utc("2026-01-01T10:59:30")));
        assert_eq!(shown.query_start, Some(utc("2026-01-01T10:59:00")));
        assert_eq!(facts.xact_start, Seen::Absent);
    }

    fn impact_of(a: &Activity, offset: chrono::Duration, include: bool) -> Impact {
        impact(&row("running"), Some(a), offset, include).0
    }

    #[test]
    fn a_reused_id_or_a_missing_row_leaves_the_state_unknown() {
        let other = Activity {
            login_time: Some(at("2026-01-01T10:30:00")),
            ..activity()
        };
        for a in [None, Some(&other)] {
            let (impact, state, facts) =
                impact(&row("sleeping"), a, chrono::Duration::zero(), true);
            assert_eq!(
                (impact, state, facts),
                (Impact::default(), None, StateFacts::UNKNOWN)
            );
        }
    }

    #[test]
    fn a_killed_or_rolling_back_request_is_rolling_back() {
        let with = |r: Request| Activity {
            request: Some(r),
            ..activity()
        };
        assert!(rolling_back(&row("rollback"), None));
        assert!(rolling_back(
            &row("running"),
            Some(&with(request("running", "KILLED/ROLLBACK")))
        ));
        assert!(rolling_back(
            &row("running"),
            Some(&with(request("rollback", "UPDATE")))
        ));
        assert!(!rolling_back(
            &row("running"),
            Some(&with(request("suspended", "UPDATE")))
        ));
        assert!(!rolling_back(&row("sleeping"), Some(&activity())));
    }
}
