//! One session named exactly: its id and, where the engine records one, its start time.
//!
//! Session ids are reused (a PostgreSQL pid, a SQL Server session_id), so an id alone could
//! reach whoever connected under it since the operator looked; the start time tells them
//! apart. MySQL and MariaDB record no start, and their connection ids only rise until a
//! restart, so there the id alone names a session.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// A single session: `{"pid": 123, "backend_start": "2026-12-07T01:02:03.456789Z"}`, or as
/// text `123@2026-12-07T01:02:03.456789Z` (`123` where the engine records no start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SessionRef {
    /// The session id (PostgreSQL pid, SQL Server session_id, MySQL connection id).
    pub pid: i64,
    /// When it connected, exactly as the listing shows it; required where the engine
    /// records it (PostgreSQL, SQL Server), refused where it does not (MySQL, MariaDB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_start: Option<DateTime<Utc>>,
}

impl SessionRef {
    fn checked(pid: i64, backend_start: Option<DateTime<Utc>>) -> Result<Self, String> {
        if pid <= 0 {
            return Err(format!(
                "pid {pid} is not a session id (a positive integer)"
            ));
        }
        Ok(Self { pid, backend_start })
    }
}

impl fmt::Display for SessionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.backend_start {
            // AutoSi keeps every digit the engine gave, so the text parses back to the same
            // instant.
            Some(start) => write!(
                f,
                "{}@{}",
                self.pid,
                start.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            ),
            None => write!(f, "{}", self.pid),
        }
    }
}

impl FromStr for SessionRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let shown = || s.chars().take(80).collect::<String>();
        let (pid, start) = match s.split_once('@') {
            Some((pid, start)) => (pid, Some(start)),
            None => (s, None),
        };
        let pid: i64 = pid.trim().parse().map_err(|_| {
            format!(
                "{:?} is not a session: PID or PID@START (START in RFC 3339, as the listing \
                 shows backend_start)",
                shown()
            )
        })?;
        let start = match start {
            None => None,
            Some(t) => Some(
                DateTime::parse_from_rfc3339(t.trim())
                    .map_err(|e| {
                        let hint = if t.contains(' ') {
                            " (a '+' in a query string must be sent as %2B)"
                        } else {
                            ""
                        };
                        format!(
                            "{:?}: the start is not an RFC 3339 time ({e}){hint}",
                            shown()
                        )
                    })?
                    .with_timezone(&Utc),
            ),
        };
        Self::checked(pid, start)
    }
}

impl<'de> Deserialize<'de> for SessionRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The object form; unknown keys refused like the selector's.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Object {
            pid: i64,
            #[serde(default)]
            backend_start: Option<DateTime<Utc>>,
        }

        struct RefVisitor;

        impl<'de> Visitor<'de> for RefVisitor {
            type Value = SessionRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a session: {\"pid\": N, \"backend_start\": \"RFC 3339\"} or \"PID@START\"",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<SessionRef, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SessionRef, A::Error> {
                let o = Object::deserialize(de::value::MapAccessDeserializer::new(map))?;
                SessionRef::checked(o.pid, o.backend_start).map_err(de::Error::custom)
            }
        }

        d.deserialize_any(RefVisitor)
    }
}
