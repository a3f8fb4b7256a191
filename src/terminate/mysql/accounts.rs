//! Accounts: which `'user'@'host'` a session authenticated as, decided the way the server
//! picks it (the most specific matching host pattern).

use crate::terminate::EngineError;

/// An account a mapping names: `app` (any host) or `'app'@'10.%'`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Account {
    /// User name.
    pub user: String,
    /// Host pattern, when the mapping names one.
    pub host: Option<String>,
}

impl Account {
    /// Parses `user` or `'user'@'host'` (quotes may be `'`, `"` or backticks).
    pub fn parse(login: &str) -> Result<Self, EngineError> {
        let unquote = |s: &str| {
            let s = s.trim();
            let quoted = s.len() >= 2
                && ['\'', '"', '`']
                    .iter()
                    .any(|q| s.starts_with(*q) && s.ends_with(*q));
            if quoted {
                s[1..s.len() - 1].to_owned()
            } else {
                s.to_owned()
            }
        };
        let quoted_account = login.trim_start().starts_with(['\'', '"', '`']);
        match login.rsplit_once('@') {
            Some((user, host)) if quoted_account => Ok(Self {
                user: unquote(user),
                host: Some(unquote(host)),
            }),
            _ if login.is_empty() => Err(EngineError::Config("empty MySQL login".into())),
            _ => Ok(Self {
                user: login.to_owned(),
                host: None,
            }),
        }
    }

    /// The account as MySQL writes it.
    pub fn display(user: &str, host: &str) -> String {
        format!("'{user}'@'{host}'")
    }
}

/// How specific a host pattern is; smaller sorts first, as MySQL orders accounts when it
/// picks the one a connection authenticates as: literal hosts, then patterns by the length
/// of their literal prefix, then `%`.
fn specificity(host: &str) -> (u8, usize) {
    match host.find(['%', '_']) {
        None => (0, 0),
        Some(_) if host == "%" => (2, 0),
        Some(first_wildcard) => (1, usize::MAX - first_wildcard),
    }
}

/// SQL `LIKE` matching of a host pattern against a client host, case-insensitively.
fn like(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'%'), _) => {
            like(&pattern[1..], text) || (!text.is_empty() && like(pattern, &text[1..]))
        }
        (Some(b'_'), Some(_)) => like(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p.eq_ignore_ascii_case(t) => like(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// The account (host pattern) a connection from `client_host` authenticated as, among the
/// `hosts` that exist for its user: the most specific matching one, as the server picks it.
pub fn authenticated_host<'a>(hosts: &'a [String], client_host: &str) -> Option<&'a str> {
    let mut candidates: Vec<&String> = hosts.iter().collect();
    candidates.sort_by_key(|h| specificity(h));
    candidates
        .into_iter()
        .find(|h| like(h.as_bytes(), client_host.as_bytes()))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_parse_with_or_without_a_host() {
        assert_eq!(
            Account::parse("app").unwrap(),
            Account {
                user: "app".into(),
                host: None
            }
        );
        assert_eq!(
            Account::parse("'app'@'10.%'").unwrap(),
            Account {
                user: "app".into(),
                host: Some("10.%".into())
            }
        );
        assert_eq!(
            Account::parse("`app`@`%`").unwrap().host.as_deref(),
            Some("%")
        );
        // A user name containing @ without quotes is a user name.
        assert_eq!(Account::parse("svc@corp").unwrap().host, None);
    }

    #[test]
    fn the_most_specific_matching_account_wins() {
        let hosts = vec![
            "%".to_owned(),
            "10.%".to_owned(),
            "10.0.0.5".to_owned(),
            "10.0.%".to_owned(),
        ];
        assert_eq!(authenticated_host(&hosts, "10.0.0.5"), Some("10.0.0.5"));
        assert_eq!(authenticated_host(&hosts, "10.0.0.6"), Some("10.0.%"));
        assert_eq!(authenticated_host(&hosts, "10.1.0.6"), Some("10.%"));
        assert_eq!(authenticated_host(&hosts, "192.168.1.1"), Some("%"));
        assert_eq!(
            authenticated_host(&["localhost".to_owned()], "127.0.0.1"),
            None
        );
        assert_eq!(
            authenticated_host(&["LOCALHOST".to_owned()], "localhost"),
            Some("LOCALHOST")
        );
        assert_eq!(
            authenticated_host(&["10.0.0._".to_owned()], "10.0.0.7"),
            Some("10.0.0._")
        );
    }
}
