//! The PostgreSQL listing with impact: every client backend, what it holds and waits for,
//! and the selector's decision on it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::Postgres;
use super::query_error;
use crate::config::Engine as EngineKind;
use crate::select::{Decision, Facts, Seen, Selector, SessionState};
use crate::terminate::listing::{Impact, Listed, count_blocking, unsupported_sessions};
use crate::terminate::{EngineError, Session, SkipReason, sqlx_error};

/// Every backend but this one, in one round trip. `pg_blocking_pids()` takes the lock
/// manager's locks, so it is called only for backends waiting on a lock. The query text
/// leaves the server only when `$1` asks for it. Backends that are not clients are read too:
/// they can block clients, and `blocking` counts every waiter.
const LISTING_SQL: &str = r#"
SELECT a.pid, a.usesysid::int8 AS role_oid, r.rolname::text AS login,
       a.datname::text AS database, a.application_name::text AS application_name,
       host(a.client_addr) AS client_addr, a.backend_start, a.state::text AS state,
       a.state_change, a.xact_start, a.query_start,
       a.wait_event_type::text || ':' || a.wait_event::text AS wait_event,
       a.backend_type::text AS backend_type,
       CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END AS blocked_by,
       CASE WHEN $1::bool THEN a.query END AS query,
       CASE
           WHEN a.usesysid = (SELECT usesysid FROM pg_stat_activity WHERE pid = pg_backend_pid())
                OR r.rolname = ANY($2::text[]) THEN 'own_login'
           WHEN r.rolsuper THEN 'superuser'
           WHEN a.backend_type <> 'client backend' THEN 'system_backend'
       END AS guard,
       statement_timestamp() AS now
FROM pg_stat_activity a
LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.pid <> pg_backend_pid()
ORDER BY a.backend_start NULLS FIRST, a.pid
"#;

impl Postgres {
    /// The connections non-superusers may open: `max_connections` less the reserved slots.
    pub(super) async fn client_limit(&self) -> Result<u64, EngineError> {
        // `reserved_connections` (16+) is read with missing_ok, NULL before 16.
        let mut conn = self.connection().await?;
        let limit: i64 = sqlx::query_scalar(
            "SELECT current_setting('max_connections')::int8 \
             - current_setting('superuser_reserved_connections')::int8 \
             - COALESCE(current_setting('reserved_connections', true)::int8, 0)",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(query_error)?;
        Ok(u64::try_from(limit).unwrap_or(0))
    }

    /// The client sessions with their impact, each decided by `selector`. Sessions of a
    /// dropped role are named by the login sever remembered for its oid, when the selector
    /// names that login.
    pub(super) async fn list_sessions(
        &self,
        selector: &Selector,
        include_query: bool,
    ) -> Result<Vec<Listed>, EngineError> {
        // Checked by resolve already; an id alone must never reach a reused pid.
        if let Some(why) = unsupported_sessions(EngineKind::Postgres, &selector.sessions) {
            return Err(EngineError::Unsupported(format!("sessions: {why}")));
        }
        let remembered: BTreeMap<i64, String> = if selector.logins.is_empty() {
            BTreeMap::new()
        } else {
            self.remembered(&selector.logins)
                .await?
                .into_iter()
                .map(|(login, oid)| (oid, login))
                .collect()
        };
        let mut conn = self.connection().await?;
        let own_names: Vec<&str> = self.store.login().into_iter().collect();
        let rows = sqlx::query(LISTING_SQL)
            .bind(include_query)
            .bind(&own_names)
            .fetch_all(&mut *conn)
            .await
            .map_err(sqlx_error)?;
        let mut listed = Vec::with_capacity(rows.len());
        for row in &rows {
            listed.push(decode(row, &remembered, selector).map_err(sqlx_error)?);
        }
        count_blocking(&mut listed);
        // A backend hidden from sever (no `pg_read_all_stats`) shows no type: kept when it
        // has a role, since it may be a client, and never selected (see `decode`).
        // Walsenders are kept, guarded, so a revocation of a replication login says why
        // it spared them; the server's own workers are no one's sessions.
        listed.retain(|l| match l.impact.backend_type.as_deref() {
            Some(kind) => kind == "client backend" || kind == "walsender",
            None => l.session.login_id.is_some(),
        });
        Ok(listed)
    }
}

/// One row: the session, its impact, and the decision on what could be read. Without
/// `pg_read_all_stats`, another role's backend shows no start time, state, address or
/// transaction: those are unknown, not absent, and the selector spares them.
fn decode(
    row: &PgRow,
    remembered: &BTreeMap<i64, String>,
    selector: &Selector,
) -> Result<Listed, sqlx::Error> {
    let oid: Option<i64> = row.try_get("role_oid")?;
    let login: Option<String> = row.try_get("login")?;
    let login = login.or_else(|| oid.and_then(|o| remembered.get(&o).cloned()));
    let backend_start: Option<DateTime<Utc>> = row.try_get("backend_start")?;
    let state: Option<String> = row.try_get("state")?;
    let state_since: Option<DateTime<Utc>> = row.try_get("state_change")?;
    let xact_start: Option<DateTime<Utc>> = row.try_get("xact_start")?;
    let blocked_by: Option<Vec<i32>> = row.try_get("blocked_by")?;
    let session = Session {
        pid: i64::from(row.try_get::<i32, _>("pid")?),
        login,
        login_id: oid.map(|o| o.to_string()),
        database: row.try_get("database")?,
        application_name: row.try_get("application_name")?,
        client_addr: row.try_get("client_addr")?,
        backend_start,
        state: state.clone(),
    };
    let impact = Impact {
        state_since,
        xact_start,
        query_start: row.try_get("query_start")?,
        wait_event: row.try_get("wait_event")?,
        blocked_by: blocked_by
            .unwrap_or_default()
            .into_iter()
            .map(i64::from)
            .collect(),
        blocking: 0,
        backend_type: row.try_get("backend_type")?,
        query: row.try_get("query")?,
        statement_id: None,
    };
    let now: DateTime<Utc> = row.try_get("now")?;
    let visible = backend_start.is_some();
    let mut facts = Facts::unknown(now);
    facts.pid = Seen::Known(session.pid);
    facts.login = session.login.as_deref().map_or(Seen::Unknown, Seen::Known);
    facts.database = session
        .database
        .as_deref()
        .map_or(Seen::Unknown, Seen::Known);
    // Shown to every role, unlike the rest.
    facts.application_name = session
        .application_name
        .as_deref()
        .map_or(Seen::Unknown, Seen::Known);
    if visible {
        facts.client_addr = Facts::addr(session.client_addr.as_deref());
        facts.backend_start = backend_start.map_or(Seen::Unknown, Seen::Known);
        facts.state = match state.as_deref() {
            Some(s) => SessionState::from_postgres(s).map_or(Seen::Absent, Seen::Known),
            None => Seen::Unknown,
        };
        facts.state_since = state_since.map_or(Seen::Unknown, Seen::Known);
        facts.xact_start = xact_start.map_or(Seen::Absent, Seen::Known);
    }
    let decision = match selector.decide(&facts) {
        // It may be a background worker, which is never ended.
        Decision::Selected if impact.backend_type.is_none() => Decision::Unknown("backend_type"),
        decision => decision,
    };
    let guard: Option<String> = row.try_get("guard")?;
    Ok(Listed {
        session,
        impact,
        decision,
        guard: guard.map(|g| match g.as_str() {
            "own_login" => SkipReason::OwnLogin,
            "superuser" => SkipReason::Superuser,
            _ => SkipReason::SystemBackend,
        }),
    })
}

#[cfg(test)]
mod tests;
