//! The one rule for names that reach a database from outside sever: logins, database names,
//! application names and client addresses, whether they come from the config, an operator
//! (API or CLI), or a rotation system (an AWS secret's `username`, a Vault role's).
//!
//! A name an engine cannot hold fails there on every attempt (PostgreSQL refuses NUL as an
//! "invalid byte sequence", MariaDB a 4-byte character as an "illegal mix of collations"),
//! and the queue would retry it for `queue.retry_for`. So it is refused before anything is
//! queued. Two layers: [`check`] holds for every target, [`check_on`] adds what one engine
//! can store, each limit counted in the unit that engine counts in.

use super::Engine;

/// What a name names: each engine holds each kind differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A login (role, user, account); on MySQL optionally `'user'@'host'`, on SQL Server
    /// optionally `database/user`.
    Login,
    /// A database name.
    Database,
    /// A client's application name (PostgreSQL `application_name`, SQL Server `program_name`).
    ApplicationName,
    /// A client address as the engine reports it (a sessions filter).
    ClientAddr,
}

impl NameKind {
    /// The field name as requests spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            NameKind::Login => "login",
            NameKind::Database => "database",
            NameKind::ApplicationName => "application_name",
            NameKind::ClientAddr => "client_addr",
        }
    }
}

/// A refused name: which field, the value (escaped and shortened), and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {shown} {problem}")]
pub struct NameError {
    kind: &'static str,
    shown: String,
    problem: String,
}

impl NameError {
    fn new(kind: NameKind, value: &str, problem: String) -> Self {
        Self {
            kind: kind.as_str(),
            shown: shown(value),
            problem,
        }
    }

    /// The field the refused name was given for (`login`, `database`, …).
    pub fn field(&self) -> &'static str {
        self.kind
    }
}

/// Longest PostgreSQL name, in bytes (`NAMEDATALEN - 1`).
pub const POSTGRES_MAX_BYTES: usize = 63;
/// Longest MySQL/MariaDB user name, in characters (MariaDB 10.4+ `mysql.global_priv.User`
/// is `char(128)`; MySQL 8 stops at 32, and a longer name simply matches no session there).
pub const MYSQL_MAX_USER_CHARS: usize = 128;
/// Longest MySQL/MariaDB host part of `'user'@'host'`, in characters.
pub const MYSQL_MAX_HOST_CHARS: usize = 255;
/// Longest MySQL/MariaDB database name, in characters.
pub const MYSQL_MAX_DATABASE_CHARS: usize = 64;
/// Longest SQL Server name (`sysname`, `nvarchar(128)`), in UTF-16 code units.
pub const SQLSERVER_MAX_UNITS: usize = 128;

/// Whether `c` may never appear in a name: C0 and C1 controls (with DEL), the Unicode line
/// and paragraph separators, and the bidirectional formatting characters, all of which can
/// make a log line or a terminal show something other than what was sent.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// The rules that hold whatever the target: a login, database or client address is not
/// empty, and no name holds an [unsafe character](is_unsafe_char).
pub fn check(kind: NameKind, value: &str) -> Result<(), NameError> {
    if value.is_empty() && kind != NameKind::ApplicationName {
        return Err(NameError::new(kind, value, "is empty".into()));
    }
    if let Some((at, c)) = value.chars().enumerate().find(|(_, c)| is_unsafe_char(*c)) {
        return Err(NameError::new(
            kind,
            value,
            format!(
                "holds the control or formatting character U+{:04X} at character {}, which sever refuses in names",
                u32::from(c),
                at + 1
            ),
        ));
    }
    Ok(())
}

/// [`check`], then whether the engine of `target` can hold the name.
pub fn check_on(
    kind: NameKind,
    value: &str,
    target: &str,
    engine: Engine,
) -> Result<(), NameError> {
    check(kind, value)?;
    engine_rule(kind, value, engine)
        .map_err(|why| NameError::new(kind, value, format!("{why} (target {target:?})")))
}

fn engine_rule(kind: NameKind, value: &str, engine: Engine) -> Result<(), String> {
    match (engine, kind) {
        // Compared as text the engine itself formats; nothing to store.
        (_, NameKind::ClientAddr) => Ok(()),
        (Engine::Postgres, kind) => {
            if kind == NameKind::ApplicationName
                && let Some(c) = value.chars().find(|c| !(' '..='~').contains(c))
            {
                // PostgreSQL replaces such characters when a client sets the name, so no
                // session can carry it.
                return Err(format!(
                    "holds U+{:04X}; PostgreSQL keeps only printable ASCII in application names",
                    u32::from(c)
                ));
            }
            let bytes = value.len();
            if bytes > POSTGRES_MAX_BYTES {
                return Err(format!(
                    "is {bytes} bytes in UTF-8; PostgreSQL names hold at most {POSTGRES_MAX_BYTES}"
                ));
            }
            Ok(())
        }
        // MySQL keeps no application names; the engine answers such a filter itself.
        (Engine::Mysql, NameKind::ApplicationName) => Ok(()),
        (Engine::Mysql, kind) => {
            if let Some(c) = value.chars().find(|c| u32::from(*c) > 0xFFFF) {
                return Err(format!(
                    "holds U+{:04X}, outside the Basic Multilingual Plane, which MySQL/MariaDB names (utf8mb3) cannot hold",
                    u32::from(c)
                ));
            }
            let limits: &[(&str, &str, usize)] = match kind {
                NameKind::Login => {
                    let (user, host) = mysql_account(value);
                    &[
                        ("user name", user, MYSQL_MAX_USER_CHARS),
                        ("host", host.unwrap_or(""), MYSQL_MAX_HOST_CHARS),
                    ]
                }
                _ => &[("name", value, MYSQL_MAX_DATABASE_CHARS)],
            };
            for (what, part, max) in limits {
                let chars = part.chars().count();
                if chars > *max {
                    return Err(format!(
                        "has a {what} of {chars} characters; MySQL/MariaDB holds at most {max}"
                    ));
                }
            }
            Ok(())
        }
        (Engine::Sqlserver, kind) => {
            // A login may be `database/user`, a contained database user: each part is a
            // sysname of its own.
            let parts: Vec<&str> = match (kind, value.split_once('/')) {
                (NameKind::Login, Some((db, user))) if !db.is_empty() && !user.is_empty() => {
                    vec![db, user]
                }
                _ => vec![value],
            };
            for part in parts {
                let units = part.encode_utf16().count();
                if units > SQLSERVER_MAX_UNITS {
                    return Err(format!(
                        "has a part of {units} UTF-16 code units; SQL Server names (sysname) hold at most {SQLSERVER_MAX_UNITS}"
                    ));
                }
            }
            Ok(())
        }
    }
}

/// The user and host of a MySQL login, split as the MySQL engine does: `'user'@'host'` when
/// it starts with a quote, else all of it is the user.
fn mysql_account(login: &str) -> (&str, Option<&str>) {
    fn strip(s: &str) -> &str {
        let t = s.trim();
        let quoted = t.len() >= 2
            && ['\'', '"', '`']
                .iter()
                .any(|q| t.starts_with(*q) && t.ends_with(*q));
        if quoted { &t[1..t.len() - 1] } else { t }
    }
    let quoted_account = login.trim_start().starts_with(['\'', '"', '`']);
    match login.rsplit_once('@') {
        Some((user, host)) if quoted_account => (strip(user), Some(strip(host))),
        _ => (login, None),
    }
}

/// `value` for a message: escaped as Rust escapes a string (controls as `\u{…}`), and cut
/// after 64 characters so a long hostile value does not fill the log.
fn shown(value: &str) -> String {
    const SHOWN: usize = 64;
    let count = value.chars().count();
    if count <= SHOWN {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(SHOWN).collect();
        format!("{head:?}… ({count} characters)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(kind: NameKind, value: &str, engine: Engine) -> Result<(), NameError> {
        check_on(kind, value, "t", engine)
    }

    #[test]
    fn controls_separators_and_bidi_are_refused_everywhere() {
        for bad in [
            "a\0b",
            "a\u{1}",
            "a\u{7f}",
            "a\u{9b}",
            "a\r\nb",
            "\u{1b}[2K",
            "a\u{2028}",
            "a\u{202e}b",
            "a\u{2066}",
        ] {
            for kind in [
                NameKind::Login,
                NameKind::Database,
                NameKind::ApplicationName,
                NameKind::ClientAddr,
            ] {
                let e = check(kind, bad).unwrap_err().to_string();
                assert!(e.contains("control or formatting"), "{e}");
                assert!(
                    !e.chars().any(is_unsafe_char),
                    "message echoes it raw: {e:?}"
                );
            }
        }
        assert!(check(NameKind::Login, "").is_err());
        assert!(check(NameKind::Database, "").is_err());
        assert!(check(NameKind::ApplicationName, "").is_ok());
        assert!(check(NameKind::Login, "Grüße app ünïcödé 😀").is_ok());
    }

    #[test]
    fn postgres_counts_bytes_and_keeps_ascii_application_names() {
        let pg = Engine::Postgres;
        assert!(on(NameKind::Login, &"a".repeat(63), pg).is_ok());
        assert!(on(NameKind::Login, &"a".repeat(64), pg).is_err());
        // 16 four-byte characters are 64 bytes.
        assert!(on(NameKind::Login, &"😀".repeat(15), pg).is_ok());
        assert!(on(NameKind::Login, &"😀".repeat(16), pg).is_err());
        assert!(on(NameKind::Database, &"é".repeat(32), pg).is_err());
        assert!(on(NameKind::ApplicationName, "psql 16", pg).is_ok());
        assert!(on(NameKind::ApplicationName, "café", pg).is_err());
        assert!(on(NameKind::ClientAddr, "::1", pg).is_ok());
    }

    #[test]
    fn mysql_refuses_four_byte_characters_and_counts_characters() {
        let my = Engine::Mysql;
        let e = on(NameKind::Login, "app😀", my).unwrap_err().to_string();
        assert!(e.contains("U+1F600") && e.contains("utf8mb3"), "{e}");
        assert!(on(NameKind::Database, "db😀", my).is_err());
        assert!(on(NameKind::Login, &"é".repeat(128), my).is_ok());
        assert!(on(NameKind::Login, &"é".repeat(129), my).is_err());
        let account = format!("'{}'@'{}'", "u".repeat(128), "h".repeat(255));
        assert!(on(NameKind::Login, &account, my).is_ok());
        let long_host = format!("'app'@'{}'", "h".repeat(256));
        assert!(on(NameKind::Login, &long_host, my).is_err());
        assert!(on(NameKind::Database, &"d".repeat(65), my).is_err());
    }

    #[test]
    fn sql_server_counts_utf16_units_per_part() {
        let ss = Engine::Sqlserver;
        assert!(on(NameKind::Login, &"a".repeat(128), ss).is_ok());
        assert!(on(NameKind::Login, &"a".repeat(129), ss).is_err());
        // A character outside the BMP is two UTF-16 units.
        assert!(on(NameKind::Login, &"😀".repeat(64), ss).is_ok());
        assert!(on(NameKind::Login, &"😀".repeat(65), ss).is_err());
        let contained = format!("{}/{}", "d".repeat(128), "u".repeat(128));
        assert!(on(NameKind::Login, &contained, ss).is_ok());
    }

    #[test]
    fn long_values_are_shown_shortened() {
        let e = check(NameKind::Login, &format!("{}\0", "x".repeat(500)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("(501 characters)") && e.len() < 300, "{e}");
    }
}
