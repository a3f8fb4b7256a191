//! The SQL Server listing: `sys.dm_exec_sessions` with its connection, each session decided
//! by the selector. States, durations and lock waits (`dm_exec_requests`,
//! `dm_tran_session_transactions`) are not read yet, so the selector fields that need them
//! are refused here by name rather than ignored.

use super::{Principal, SESSIONS, SqlServer};
use crate::config::Engine as EngineKind;
use crate::select::{Facts, Seen, Selector};
use crate::terminate::listing::{Impact, Listed, unsupported};
use crate::terminate::{EngineError, SkipReason};

impl SqlServer {
    /// The user sessions, each decided by `selector`. A selector login names a server
    /// login or a contained database user (`orders/app`); a session found through one is
    /// decided under that name.
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
        if include_query {
            return Err(EngineError::Unsupported(
                "include_query: not read on SQL Server targets yet".into(),
            ));
        }
        let logins = selector.logins.clone();
        let (offset, found, standings) = self
            .with_client(async |c| {
                let offset = Self::offset(c).await?;
                let mut found = Vec::new();
                if logins.is_empty() {
                    let sql =
                        format!("{SESSIONS} AND s.session_id <> @@SPID ORDER BY s.session_id");
                    for row in Self::rows(c, &sql, &[]).await? {
                        let name = row.original_login_name.clone();
                        found.push((name, row));
                    }
                } else {
                    for login in &logins {
                        let principal = Principal::parse(login);
                        for row in Self::principal_sessions(c, &principal, None, None).await? {
                            found.push((login.clone(), row));
                        }
                    }
                }
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
                Ok((offset, found, standings))
            })
            .await?;
        let now = chrono::Utc::now();
        Ok(found
            .into_iter()
            .map(|(login, row)| {
                let session = row.session(offset);
                let mut facts = Facts::unknown(now);
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
                let decision = selector.decide(&facts);
                let guard = if row.status.eq_ignore_ascii_case("rollback") {
                    // Already being killed: KILL again would only report its progress.
                    Some(SkipReason::RollingBack)
                } else {
                    standings.get(&login).and_then(|s| s.skip_reason())
                };
                Listed {
                    session,
                    impact: Impact::default(),
                    decision,
                    guard,
                }
            })
            .collect())
    }
}
