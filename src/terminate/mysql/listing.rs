//! The MySQL/MariaDB listing with impact: `PROCESSLIST` with the open InnoDB transaction,
//! the lock waits between transactions, and the application name from
//! `performance_schema`, each thread decided by the selector.
//!
//! MySQL records no connection start time, so `started_before`/`started_after` cannot be
//! evaluated here (rotations use the connection-id watermark instead). Lock waits are InnoDB
//! row-lock waits only: metadata-lock waits (DDL waiting on an open transaction, the usual
//! DBA case) are in neither lock-wait table, and show only as the `wait_event` ("Waiting for
//! table metadata lock").

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlConnection, Row};

use super::privileges::Flavor;
use super::{Account, Mysql, SYSTEM_COMMANDS, authenticated_host, unsigned};
use crate::select::{Decision, Facts, Seen, Selector, SessionState};
use crate::terminate::listing::{Impact, Listed, count_blocking};
use crate::terminate::{EngineError, SkipReason, sqlx_error};

/// Every thread with its InnoDB transaction, in one round trip, with the id of its running
/// statement where the server has one (the argument: MariaDB's `p.QUERY_ID`, else `NULL`).
/// `NOW()` and `trx_started` are both in the session's time zone, so their difference is
/// exact whatever it is; `TIME` is whole seconds in the current state.
macro_rules! listing_sql {
    ($query_id:literal) => {
        concat!(
            "SELECT p.ID, p.USER, p.HOST, p.DB, p.COMMAND, p.TIME, p.STATE, ",
            "CASE WHEN ? THEN p.INFO END AS INFO, ",
            $query_id,
            " AS query_id, t.trx_state, ",
            "TIMESTAMPDIFF(MICROSECOND, t.trx_started, NOW(6)) AS trx_age_us, ",
            "UTC_TIMESTAMP(6) AS now_utc, @@performance_schema AS ps, ",
            "SUBSTRING_INDEX(CURRENT_USER(), '@', 1) AS me ",
            "FROM information_schema.PROCESSLIST p ",
            "LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID ",
            "WHERE p.ID <> CONNECTION_ID() ",
            "ORDER BY p.ID"
        )
    };
}

/// MariaDB's listing, with the statement's `QUERY_ID`.
const MARIADB_LISTING_SQL: &str = listing_sql!("p.QUERY_ID");

/// MySQL's listing: its `PROCESSLIST` has no statement id.
const MYSQL_LISTING_SQL: &str = listing_sql!("NULL");

/// Which thread waits on which, from MariaDB's InnoDB lock-wait table.
const MARIADB_WAITS_SQL: &str = "\
SELECT r.trx_mysql_thread_id AS waiting, b.trx_mysql_thread_id AS holding \
FROM information_schema.INNODB_LOCK_WAITS w \
JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id \
JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id";

/// The same from MySQL 8's `performance_schema` (the InnoDB table is gone there).
const MYSQL_WAITS_SQL: &str = "\
SELECT r.trx_mysql_thread_id AS waiting, b.trx_mysql_thread_id AS holding \
FROM performance_schema.data_lock_waits w \
JOIN information_schema.INNODB_TRX r ON r.trx_id = w.REQUESTING_ENGINE_TRANSACTION_ID \
JOIN information_schema.INNODB_TRX b ON b.trx_id = w.BLOCKING_ENGINE_TRANSACTION_ID";

/// Application names as clients sent them (`program_name`), when `performance_schema` is on.
const PROGRAM_NAMES_SQL: &str = "\
SELECT PROCESSLIST_ID AS id, ATTR_VALUE AS name \
FROM performance_schema.session_connect_attrs WHERE ATTR_NAME = 'program_name'";

impl Mysql {
    /// The connections clients may open: `max_connections`.
    pub(super) async fn client_limit(&self) -> Result<u64, EngineError> {
        let mut conn = self.connection().await?;
        let limit: u64 = sqlx::query_scalar("SELECT CAST(@@max_connections AS UNSIGNED)")
            .fetch_one(&mut *conn)
            .await
            .map_err(sqlx_error)?;
        Ok(limit)
    }

    /// The client threads with their impact, each decided by `selector`.
    pub(super) async fn list_sessions(
        &self,
        selector: &Selector,
        include_query: bool,
    ) -> Result<Vec<Listed>, EngineError> {
        let mut conn = self.connection().await?;
        let flavor = self.flavor(&mut conn).await?;
        let sql = match flavor {
            Flavor::MariaDb => MARIADB_LISTING_SQL,
            Flavor::Mysql => MYSQL_LISTING_SQL,
        };
        let rows = sqlx::query(sql)
            .bind(include_query)
            .fetch_all(&mut *conn)
            .await
            .map_err(sqlx_error)?;
        let wants_names = !selector.application_names.is_empty()
            || !selector.exclude_application_names.is_empty();
        let schema_on = match rows.first() {
            Some(row) => row.try_get::<i64, _>("ps").map_err(sqlx_error)? != 0,
            None => false,
        };
        let names = if schema_on {
            match program_names(&mut conn).await {
                Ok(names) => names,
                // Not granted: only a selector that needs the names cares.
                Err(EngineError::Rejected(why)) if wants_names => {
                    return Err(EngineError::Unsupported(format!(
                        "application_names and exclude_application_names need SELECT on \
                         performance_schema.session_connect_attrs for sever's login: {why}"
                    )));
                }
                Err(EngineError::Rejected(_)) => BTreeMap::new(),
                Err(e) => return Err(e),
            }
        } else if wants_names {
            return Err(EngineError::Unsupported(
                "application_names and exclude_application_names need performance_schema = ON \
                 on this server (MySQL and MariaDB record a client's program_name only there)"
                    .into(),
            ));
        } else {
            BTreeMap::new()
        };
        let waits = self.lock_waits(&mut conn).await?;
        let accounts = self.account_forms(&mut conn, selector).await?;
        let mut listed = Vec::with_capacity(rows.len());
        for row in &rows {
            let thread = super::decode_thread(row).map_err(sqlx_error)?;
            if SYSTEM_COMMANDS.contains(&thread.command.as_str())
                || thread.user == "system user"
                || thread.user == "event_scheduler"
            {
                continue;
            }
            let id = thread.id as i64;
            let mut l = decode(row, &thread, names.get(&thread.id), &accounts, selector)
                .map_err(sqlx_error)?;
            l.impact.blocked_by = waits.get(&id).cloned().unwrap_or_default();
            listed.push((l, thread));
        }
        self.guard(&mut conn, &rows, &mut listed).await?;
        let mut listed: Vec<Listed> = listed.into_iter().map(|(l, _)| l).collect();
        count_blocking(&mut listed);
        Ok(listed)
    }

    /// Marks the selected threads that are never ended: sever's own, an administrator's
    /// (or one whose privileges cannot be read), and one already rolling back (`KILL`ed,
    /// or its transaction rolling back): killing it again would only restart the wait.
    async fn guard(
        &self,
        conn: &mut MySqlConnection,
        rows: &[MySqlRow],
        listed: &mut [(Listed, super::Thread)],
    ) -> Result<(), EngineError> {
        let me: Option<String> = match rows.first() {
            Some(row) => row.try_get("me").map_err(sqlx_error)?,
            None => None,
        };
        let users: BTreeSet<&str> = listed
            .iter()
            .filter(|(l, _)| l.decision == Decision::Selected)
            .map(|(_, t)| t.user.as_str())
            .collect();
        let privileges = self.privileges(conn, &users).await?;
        let rolling_back: BTreeSet<u64> = rows
            .iter()
            .filter_map(|row| {
                let state: Option<String> = row.try_get("trx_state").ok()?;
                let id = unsigned(row, "ID").ok()?;
                (state.as_deref() == Some("ROLLING BACK")).then_some(id)
            })
            .collect();
        for (l, thread) in listed.iter_mut() {
            if l.decision != Decision::Selected {
                continue;
            }
            let hosts = privileges.hosts(&thread.user).unwrap_or_default();
            let account_host = authenticated_host(&hosts, &thread.client_host);
            l.guard = if me.as_deref() == Some(thread.user.as_str()) {
                Some(SkipReason::OwnLogin)
            } else if thread.command == "Killed" || rolling_back.contains(&thread.id) {
                Some(SkipReason::RollingBack)
            } else {
                privileges
                    .standing(&thread.user, account_host)
                    .skip_reason()
            };
        }
        Ok(())
    }

    /// Lock waits as waiting thread → the threads it waits on.
    async fn lock_waits(
        &self,
        conn: &mut MySqlConnection,
    ) -> Result<BTreeMap<i64, Vec<i64>>, EngineError> {
        let sql = match self.flavor(conn).await? {
            Flavor::MariaDb => MARIADB_WAITS_SQL,
            Flavor::Mysql => MYSQL_WAITS_SQL,
        };
        let rows = sqlx::query(sql).fetch_all(conn).await.map_err(sqlx_error)?;
        let mut waits: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for row in &rows {
            let waiting = unsigned(row, "waiting").map_err(sqlx_error)? as i64;
            let holding = unsigned(row, "holding").map_err(sqlx_error)? as i64;
            let list = waits.entry(waiting).or_default();
            if !list.contains(&holding) {
                list.push(holding);
            }
        }
        Ok(waits)
    }

    /// The host patterns of each user the selector names as `'user'@'host'`, so a thread
    /// is matched to the account it authenticated as, as terminations match it.
    async fn account_forms(
        &self,
        conn: &mut MySqlConnection,
        selector: &Selector,
    ) -> Result<Vec<(String, Account, Vec<String>)>, EngineError> {
        let mut forms = Vec::new();
        // Exclusions first: the first form a thread matches is the one decided on, and
        // exclusions win.
        for login in selector.exclude_logins.iter().chain(&selector.logins) {
            let account = Account::parse(login)?;
            if account.host.is_some() {
                let hosts = self.account_hosts(conn, &account.user).await?;
                forms.push((login.clone(), account, hosts));
            }
        }
        Ok(forms)
    }
}

async fn program_names(conn: &mut MySqlConnection) -> Result<BTreeMap<u64, String>, EngineError> {
    let rows = sqlx::query(PROGRAM_NAMES_SQL)
        .fetch_all(conn)
        .await
        .map_err(sqlx_error)?;
    let mut names = BTreeMap::new();
    for row in &rows {
        names.insert(
            unsigned(row, "id").map_err(sqlx_error)?,
            row.try_get("name").map_err(sqlx_error)?,
        );
    }
    Ok(names)
}

/// One thread: its session, impact and the decision. Its login is the selector's
/// `'user'@'host'` form when the thread authenticated as that account, else the user name.
fn decode(
    row: &MySqlRow,
    thread: &super::Thread,
    program_name: Option<&String>,
    accounts: &[(String, Account, Vec<String>)],
    selector: &Selector,
) -> Result<Listed, sqlx::Error> {
    let now: chrono::NaiveDateTime = row.try_get("now_utc")?;
    let now = now.and_utc();
    let in_state: Option<i64> = row.try_get("TIME")?;
    let trx_age_us: Option<i64> = row.try_get("trx_age_us")?;
    let ago = |d: ChronoDuration| -> DateTime<Utc> { now - d };
    let state_since = in_state.map(|s| ago(ChronoDuration::seconds(s)));
    let xact_start = trx_age_us.map(|us| ago(ChronoDuration::microseconds(us)));
    let state = match (thread.command.as_str(), xact_start) {
        ("Sleep", Some(_)) => SessionState::IdleInTransaction,
        ("Sleep", None) => SessionState::Idle,
        _ => SessionState::Active,
    };
    let wait: Option<String> = row.try_get("STATE")?;
    let mut session = thread.session(None);
    session.application_name = program_name.cloned();
    session.state = Some(state.as_str().to_owned());
    let impact = Impact {
        state_since,
        xact_start,
        query_start: (state == SessionState::Active)
            .then_some(state_since)
            .flatten(),
        wait_event: wait.filter(|w| !w.is_empty()),
        blocked_by: Vec::new(),
        blocking: 0,
        backend_type: None,
        query: row.try_get("INFO")?,
        statement_id: row
            .try_get::<Option<i64>, _>("query_id")
            .ok()
            .flatten()
            .filter(|_| state == SessionState::Active),
    };
    let matched_form = accounts.iter().find(|(_, account, hosts)| {
        account.user == thread.user
            && account.host.as_deref() == authenticated_host(hosts, &thread.client_host)
    });
    if let Some((_, account, _)) = matched_form
        && let Some(host) = account.host.as_deref()
    {
        // The account it authenticated as (the form matched only that host), as
        // terminations report it.
        session.login_id = Some(Account::display(&thread.user, host));
    }
    let login = matched_form.map_or(thread.user.as_str(), |(form, _, _)| form.as_str());
    let mut facts = Facts::unknown(now);
    facts.pid = Seen::Known(session.pid);
    facts.login = Seen::Known(login);
    facts.database = session
        .database
        .as_deref()
        .map_or(Seen::Absent, Seen::Known);
    facts.application_name = match program_name {
        Some(name) => Seen::Known(name.as_str()),
        // performance_schema is on (or no field needs it) but the client sent no name.
        None => Seen::Absent,
    };
    facts.client_addr = Facts::addr(session.client_addr.as_deref());
    facts.state = Seen::Known(state);
    facts.state_since = state_since.map_or(Seen::Unknown, Seen::Known);
    facts.xact_start = xact_start.map_or(Seen::Absent, Seen::Known);
    let decision = selector.decide(&facts);
    Ok(Listed {
        session,
        impact,
        decision,
        guard: None,
    })
}
