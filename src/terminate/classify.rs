//! Which engine errors are worth retrying: by SQLSTATE class (PostgreSQL), error number
//! (MySQL/MariaDB, SQL Server), or socket failure. One table, read by every engine, so a
//! failure that will only fail again is not retried for an hour and a target that is
//! briefly away is not given up on.

use super::EngineError;

/// How a failed step on a target is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The target did not answer, or refused sever's login (which may be mid-rotation): its
    /// steps wait for the target to answer a probe, and are retried at once when it does.
    Unreachable,
    /// The target answered, but the failure may pass (deadlock, lock or statement timeout,
    /// resources, operator intervention, anything unrecognised): retried with backoff, and
    /// woken by a successful probe.
    Transient,
    /// The target refused the statement for a reason that will not change by retrying
    /// (privilege, data, syntax, unknown object): at most [`DETERMINISTIC_ATTEMPTS`]
    /// attempts, with backoff between them, never woken by a probe.
    Deterministic,
    /// The target's configuration is unusable: failed at once.
    Fatal,
}

/// How many attempts a step with a [`ErrorClass::Deterministic`] failure gets in all.
pub const DETERMINISTIC_ATTEMPTS: i64 = 3;

/// What an engine error means for one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A failure of the given class.
    Failed(ErrorClass),
    /// `KILL` of a session id that no longer exists (MySQL 1094, SQL Server 6106): the
    /// session is already gone, which is not a failure.
    Gone,
}

impl EngineError {
    /// How a step that failed with this error is retried.
    pub fn class(&self) -> ErrorClass {
        match self {
            EngineError::Connect(_) | EngineError::Timeout(_) => ErrorClass::Unreachable,
            EngineError::Query(_) | EngineError::Journal(_) => ErrorClass::Transient,
            EngineError::Rejected(_) | EngineError::Unsupported(_) | EngineError::Refused(_) => {
                ErrorClass::Deterministic
            }
            EngineError::Config(_) => ErrorClass::Fatal,
        }
    }
}

/// PostgreSQL, by SQLSTATE: its class (first two characters) or, for a few, the full code.
pub fn postgres(sqlstate: &str) -> ErrorClass {
    match sqlstate {
        // lock_not_available (a lock timeout): class 55 is otherwise "object not in
        // prerequisite state", which will not change.
        "55P03" => ErrorClass::Transient,
        // insufficient_privilege and the rest of class 42 (syntax, unknown objects).
        _ if sqlstate.starts_with("42") => ErrorClass::Deterministic,
        _ => match sqlstate.get(..2).unwrap_or_default() {
            // connection exception; invalid authorization (at connect).
            "08" | "28" => ErrorClass::Unreachable,
            // insufficient resources; operator intervention (incl. statement timeout 57014,
            // admin shutdown); transaction rollback (serialization failure, deadlock).
            "53" | "57" | "40" => ErrorClass::Transient,
            // feature not supported; data exception (encoding, a NUL byte); integrity;
            // invalid transaction state; invalid catalog / schema name; object state;
            // insufficient privilege raised from a function (class 42 above).
            "0A" | "22" | "23" | "25" | "3D" | "3F" | "55" => ErrorClass::Deterministic,
            _ => ErrorClass::Transient,
        },
    }
}

/// MySQL / MariaDB, by error number (SQLSTATE is often the catch-all `HY000`).
pub fn mysql(number: u16, sqlstate: Option<&str>) -> Verdict {
    match number {
        // Unknown thread id: the session ended before the KILL.
        1094 => Verdict::Gone,
        // Access denied (login), access denied to database, host blocked / not allowed.
        1045 | 1044 | 1129 | 1130 => Verdict::Failed(ErrorClass::Unreachable),
        // Lost connection, server gone away, server shutdown in progress.
        1053 | 2002 | 2003 | 2006 | 2013 => Verdict::Failed(ErrorClass::Unreachable),
        // Too many connections, out of memory / resources, lock wait timeout, deadlock,
        // query interrupted / execution time exceeded, read only for a failover.
        1040 | 1037 | 1038 | 1041 | 1203 | 1205 | 1213 | 1317 | 1290 | 3024 | 1969 => {
            Verdict::Failed(ErrorClass::Transient)
        }
        // Not the owner of the thread; command / column / table denied; needs a privilege
        // (SUPER, PROCESS, CONNECTION_ADMIN); syntax; unknown database / table / column;
        // wrong value or string for the character set.
        1095 | 1142 | 1143 | 1227 | 1064 | 1049 | 1146 | 1054 | 1366 | 1267 | 1300 | 1406 => {
            Verdict::Failed(ErrorClass::Deterministic)
        }
        // Anything else by its SQLSTATE, where that is specific.
        _ => Verdict::Failed(sqlstate.map_or(ErrorClass::Transient, |s| match s {
            "HY000" => ErrorClass::Transient,
            _ => postgres(s),
        })),
    }
}

/// SQL Server, by error number.
pub fn sqlserver(number: u32) -> Verdict {
    match number {
        // Process ID is not an active process ID: the session ended before the KILL.
        6106 => Verdict::Gone,
        // Login failed; cannot open the database requested by the login.
        18456 | 4060 => Verdict::Failed(ErrorClass::Unreachable),
        // Deadlock victim; lock request timeout; resource limits; the server is busy or
        // shutting down; the database is in transition.
        1205 | 1222 | 701 | 8645 | 10928 | 10929 | 40501 | 40613 | 6005 | 952 => {
            Verdict::Failed(ErrorClass::Transient)
        }
        // Permission denied (object, database, server, VIEW SERVER STATE); KILL denied;
        // syntax; invalid object / column name; conversion and truncation errors.
        229 | 230 | 262 | 297 | 300 | 6102 | 102 | 156 | 208 | 207 | 245 | 8152 | 2628 => {
            Verdict::Failed(ErrorClass::Deterministic)
        }
        _ => Verdict::Failed(ErrorClass::Transient),
    }
}

/// What a sqlx error from a PostgreSQL or MySQL target means: socket and protocol trouble
/// is [`ErrorClass::Unreachable`], a server error goes by the table above.
pub fn sqlx_verdict(e: &sqlx::Error) -> Verdict {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_) => Verdict::Failed(ErrorClass::Unreachable),
        sqlx::Error::Database(db) => {
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                mysql(my.number(), my.code())
            } else {
                Verdict::Failed(db.code().map_or(ErrorClass::Transient, |c| postgres(&c)))
            }
        }
        // Decoding a column sever asked for: its own query and the server disagree.
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_) => Verdict::Failed(ErrorClass::Deterministic),
        _ => Verdict::Failed(ErrorClass::Transient),
    }
}

/// Whether `e` says the connection itself is gone rather than that the statement failed:
/// a socket or protocol failure, or PostgreSQL ending the session (admin or crash shutdown,
/// a terminated backend, a connection exception). A connection that died while it sat idle
/// in the pool fails its next statement this way, and that statement never ran.
pub fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            matches!(c.as_ref(), "57P01" | "57P02" | "57P03") || c.starts_with("08")
        }),
        _ => false,
    }
}

/// Turns a failure's message into the engine error of its class.
pub fn engine_error(class: ErrorClass, message: String) -> EngineError {
    match class {
        ErrorClass::Unreachable => EngineError::Connect(message),
        ErrorClass::Transient => EngineError::Query(message),
        ErrorClass::Deterministic => EngineError::Rejected(message),
        ErrorClass::Fatal => EngineError::Config(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_classes() {
        for (code, class) in [
            ("08006", ErrorClass::Unreachable),
            ("28P01", ErrorClass::Unreachable),
            ("53300", ErrorClass::Transient),
            ("57014", ErrorClass::Transient),
            ("40P01", ErrorClass::Transient),
            ("55P03", ErrorClass::Transient),
            ("42501", ErrorClass::Deterministic),
            ("42P01", ErrorClass::Deterministic),
            ("22021", ErrorClass::Deterministic),
            ("XX000", ErrorClass::Transient),
        ] {
            assert_eq!(postgres(code), class, "{code}");
        }
    }

    #[test]
    fn kill_of_an_unknown_id_is_gone_not_a_failure() {
        assert_eq!(mysql(1094, Some("HY000")), Verdict::Gone);
        assert_eq!(sqlserver(6106), Verdict::Gone);
        assert_eq!(
            mysql(1205, Some("HY000")),
            Verdict::Failed(ErrorClass::Transient)
        );
        assert_eq!(
            mysql(9999, Some("42000")),
            Verdict::Failed(ErrorClass::Deterministic)
        );
    }

    #[test]
    fn only_a_dead_connection_counts_as_lost() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(connection_lost(&sqlx::Error::Io(reset)));
        assert!(connection_lost(&sqlx::Error::Protocol(
            "unexpected EOF".into()
        )));
        // A pool that cannot hand out a connection in time is not a connection that died:
        // retrying it would only wait again.
        assert!(!connection_lost(&sqlx::Error::PoolTimedOut));
        assert!(!connection_lost(&sqlx::Error::RowNotFound));
    }
}
