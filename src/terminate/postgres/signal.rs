//! Signalling listed sessions for the selector path: cancel or terminate by pid and start
//! time in one statement, one by one when a refusal would abort the set.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use super::sql::SIGNAL_SQL;
use super::{INSUFFICIENT_PRIVILEGE, Postgres, query_error};
use crate::terminate::{EngineError, Sent, Session, Signal};

impl Postgres {
    /// Signals `sessions` in one statement; if one of them is refused (42501: it became a
    /// superuser's since it was listed, or sever lacks `pg_signal_backend`), which aborts
    /// the whole statement, signals them one by one so the refusal is that session's alone.
    pub(super) async fn send(
        &self,
        sessions: &[&Session],
        signal: Signal,
    ) -> Result<Vec<Sent>, EngineError> {
        let mut conn = self.connection().await?;
        match Self::send_on(&mut conn, sessions, signal).await {
            Err(sqlx::Error::Database(db))
                if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) =>
            {
                let mut sent = Vec::with_capacity(sessions.len());
                for session in sessions {
                    sent.push(match Self::send_on(&mut conn, &[session], signal).await {
                        Ok(mut one) => one.pop().unwrap_or(Sent::Gone),
                        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {
                            Sent::Refused(format!(
                                "{} (grant pg_signal_backend to sever's login; superusers are never signalled)",
                                db.message()
                            ))
                        }
                        Err(e) => return Err(query_error(e)),
                    });
                }
                Ok(sent)
            }
            result => result.map_err(query_error),
        }
    }

    async fn send_on(
        conn: &mut PgConnection,
        sessions: &[&Session],
        signal: Signal,
    ) -> Result<Vec<Sent>, sqlx::Error> {
        let pids: Vec<i32> = sessions.iter().map(|s| s.pid as i32).collect();
        let starts: Vec<Option<DateTime<Utc>>> = sessions.iter().map(|s| s.backend_start).collect();
        let rows = sqlx::query(SIGNAL_SQL)
            .bind(&pids)
            .bind(&starts)
            .bind(signal == Signal::Cancel)
            .fetch_all(conn)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(match row.try_get::<Option<bool>, _>("sent")? {
                    Some(true) => Sent::Signalled,
                    _ => Sent::Gone,
                })
            })
            .collect()
    }
}
