//! The SQL Server listing: `sys.dm_exec_sessions` with its connection, and what each session
//! is doing ([`activity`]), each session decided by the selector: states and their
//! durations from `dm_exec_requests` and `dm_tran_session_transactions`, lock waits from
//! the requests' `blocking_session_id`.

use std::collections::BTreeSet;

use super::{Principal, SESSIONS, SqlServer, activity};
use crate::config::Engine as EngineKind;
use crate::select::{Decision, Facts, Seen, Selector};
use crate::terminate::listing::{Listed, count_blocking, unsupported, unsupported_sessions};
use crate::terminate::{EngineError, SkipReason};

impl SqlServer {
    /// Every user session, with its impact; those of the selector's logins (when it names
    /// any) decided by it, the others listed as excluded by `logins` so that whom they
    /// wait on still counts. A selector login names a server login or a contained database
    /// user (`orders/app`); a session found through one is decided under that name.
    pub(super) async fn list_sessions(
        &self,
        selector: &Selector,
        include_query: bool,
    ) -> Result<Vec<Listed>, EngineError> {
        for field in selector.fields() {
            if let Some(why) = unsupported(EngineKind::Sqlserver, field) {
                return Err(EngineError::Unsupported(format!("{field}: {why}")));
            }
        }
        // Checked by resolve already; an id alone must never reach a reused session_id.
        if let Some(why) = unsupported_sessions(EngineKind::Sqlserver, &selector.sessions) {
            return Err(EngineError::Unsupported(format!("sessions: {why}")));
        }
        let logins = selector.logins.clone();
        let (offset, found, others, (activities, now_local), standings) = self
            .with_client(async |c| {
                let offset = Self::offset(c).await?;
                let sql = format!("{SESSIONS} AND s.session_id <> @@SPID ORDER BY s.session_id");
                let all = Self::rows(c, &sql, &[]).await?;
                let mut found = Vec::new();
                let mut others = Vec::new();
                if logins.is_empty() {
                    found = all
                        .into_iter()
                        .map(|row| (row.original_login_name.clone(), row))
                        .collect();
                } else {
                    for login in &logins {
                        let principal = Principal::parse(login);
                        for row in Self::principal_sessions(c, &principal, None, None).await? {
                            found.push((login.clone(), row));
                        }
                    }
                    let seen: BTreeSet<_> = found
                        .iter()
                        .map(|(_, r)| (r.session_id, r.login_time))
                        .collect();
                    others = all
                        .into_iter()
                        .filter(|r| !seen.contains(&(r.session_id, r.login_time)))
                        .collect();
                }
                let activities = activity::read(c, include_query).await?;
                // Administrators' sessions are never ended: asked once per login found.
                let mut standings = std::collections::BTreeMap::new();
                for (login, row) in &found {
                    if !standings.contains_key(login) {
                        let principal = match logins.contains(login) {
                            true => Principal::parse(login),
                            false => Principal {
                                name: row.original_login_name.as_str(),
                                database: None,
                            },
                        };
                        let standing = Self::standing(c, &principal).await?;
                        standings.insert(login.clone(), standing);
                    }
                }
                Ok((offset, found, others, activities, standings))
            })
            .await?;
        // The server's clock, so durations are measured as the server measures its times.
        let now = now_local.map_or_else(chrono::Utc::now, |t| (t - offset).and_utc());
        let mut listed = Vec::with_capacity(found.len() + others.len());
        let rows = found
            .into_iter()
            .map(|(login, row)| (Some(login), row))
            .chain(others.into_iter().map(|row| (None, row)));
        for (login, row) in rows {
            // Ids are reused: the activity is this session's only if it logged in then too.
            let activity = activities
                .get(&row.session_id)
                .filter(|a| a.login_time == Some(row.login_time));
            let (impact, state, state_facts) =
                activity::impact(&row, activity, offset, include_query);
            let mut session = row.session(offset);
            if let Some(state) = state {
                session.state = Some(state.as_str().to_owned());
            }
            let decision = match &login {
                Some(login) => {
                    let mut facts = Facts::unknown(now);
                    facts.pid = Seen::Known(session.pid);
                    facts.login = Seen::Known(login.as_str());
                    facts.database = session
                        .database
                        .as_deref()
                        .map_or(Seen::Absent, Seen::Known);
                    facts.application_name = session
                        .application_name
                        .as_deref()
                        .map_or(Seen::Absent, Seen::Known);
                    // `<local machine>` (shared memory) and host names are not addresses.
                    facts.client_addr = Facts::addr(row.client_net_address.as_deref());
                    facts.backend_start = session.backend_start.map_or(Seen::Unknown, Seen::Known);
                    facts.state = state_facts.state;
                    facts.state_since = state_facts.state_since;
                    facts.xact_start = state_facts.xact_start;
                    selector.decide(&facts)
                }
                // Not found through any selector login (a contained user of the same
                // name is another principal), whatever its login name reads.
                None => Decision::Excluded("logins".into()),
            };
            let guard = if activity::rolling_back(&row, activity) {
                Some(SkipReason::RollingBack)
            } else {
                login
                    .as_ref()
                    .and_then(|l| standings.get(l))
                    .and_then(|s| s.skip_reason())
            };
            listed.push(Listed {
                session,
                impact,
                decision,
                guard,
            });
        }
        count_blocking(&mut listed);
        Ok(listed)
    }
}
