//! Ending one listed SQL Server session for the selector path: `KILL`, after checking that
//! its id still names the session that was listed.

use super::{Connection, Principal, SqlServer, server_code};
use crate::terminate::{EngineError, Sent, Session, TerminateOutcome, classify};

impl SqlServer {
    /// `KILL`s a listed session if its id still names it (ids are reused: the login and
    /// login time are checked right before).
    pub(super) async fn kill_listed(
        client: &mut Connection,
        session: &Session,
        offset: chrono::Duration,
    ) -> Result<Sent, EngineError> {
        let (Some(login), Ok(id)) = (session.login.as_deref(), i16::try_from(session.pid)) else {
            return Ok(Sent::Gone);
        };
        let principal = Principal::parse(login);
        let now = Self::principal_sessions(client, &principal, None, Some(i32::from(id))).await?;
        if !now
            .iter()
            .any(|r| r.session(offset).backend_start == session.backend_start)
        {
            return Ok(Sent::Gone);
        }
        // KILL takes no parameters; the id is an i16, so only digits reach SQL.
        let result = match client.simple_query(format!("KILL {id}")).await {
            Ok(stream) => stream.into_results().await.map(drop),
            Err(e) => Err(e),
        };
        Ok(match result {
            Ok(()) => Sent::Signalled,
            Err(e) => match server_code(&e) {
                Some(n) if classify::sqlserver(n) == classify::Verdict::Gone => Sent::Gone,
                _ => {
                    let mut outcome = TerminateOutcome::default();
                    Self::kill_failed(&mut outcome, session.clone(), &e);
                    match outcome.failed.pop() {
                        Some(failed) => Sent::Refused(failed.error),
                        None => Sent::Gone,
                    }
                }
            },
        })
    }
}
