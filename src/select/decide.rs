//! The one decision: is this session selected, and if not, by which rule.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{AddrBlock, Pattern, Selector, SessionState};

/// A value as the engine read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<T> {
    /// The value.
    Known(T),
    /// Known to have none (a local-socket session has no client address; a session with no
    /// transaction open has no transaction start; a state no selector names).
    Absent,
    /// Could not be read (sever lacks the privilege, or the engine gave a host name where an
    /// address was needed): never matches an inclusion, always spared by an exclusion.
    Unknown,
}

impl<T: Copy> Seen<T> {
    fn from_option(value: Option<T>, when_none: Seen<T>) -> Seen<T> {
        value.map_or(when_none, Seen::Known)
    }
}

/// What an engine read about one session, for [`Selector::decide`].
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The session id (PostgreSQL pid, SQL Server session_id, MySQL connection id).
    pub pid: Seen<i64>,
    /// The login; unknown for a dropped login sever never knew.
    pub login: Seen<&'a str>,
    /// The database connected to.
    pub database: Seen<&'a str>,
    /// The client-supplied application name.
    pub application_name: Seen<&'a str>,
    /// The client address; absent for a local socket.
    pub client_addr: Seen<IpAddr>,
    /// When the session connected.
    pub backend_start: Seen<DateTime<Utc>>,
    /// The state, absent when it is one no selector names.
    pub state: Seen<SessionState>,
    /// Since when the session is in that state.
    pub state_since: Seen<DateTime<Utc>>,
    /// When its open transaction began; absent with none open.
    pub xact_start: Seen<DateTime<Utc>>,
    /// The engine's clock when it read the rest, so durations are the engine's own.
    pub now: DateTime<Utc>,
}

impl<'a> Facts<'a> {
    /// Facts with every value unknown, read at `now`; engines fill in what they read.
    pub fn unknown(now: DateTime<Utc>) -> Self {
        Self {
            pid: Seen::Unknown,
            login: Seen::Unknown,
            database: Seen::Unknown,
            application_name: Seen::Unknown,
            client_addr: Seen::Unknown,
            backend_start: Seen::Unknown,
            state: Seen::Unknown,
            state_since: Seen::Unknown,
            xact_start: Seen::Unknown,
            now,
        }
    }

    /// A client address from the engine's text: an address, absent when the engine gave
    /// none (local socket), unknown when it is something else (a host name).
    pub fn addr(text: Option<&str>) -> Seen<IpAddr> {
        match text {
            None | Some("") => Seen::Absent,
            Some(t) => Seen::from_option(t.parse().ok(), Seen::Unknown),
        }
    }
}

/// Whether a session is selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every field given holds, and no exclusion does.
    Selected,
    /// A rule keeps the session out: an exclusion that matched
    /// (`exclude_application_names: pg_dump`) or an inclusion it does not meet (`databases`).
    Excluded(String),
    /// The value a field needs could not be read; the session is spared (`unknown_<field>`).
    Unknown(&'static str),
}

impl Decision {
    /// The report's reason word for a session not selected.
    pub fn reason(&self) -> Option<String> {
        match self {
            Decision::Selected => None,
            Decision::Excluded(_) => Some("excluded".into()),
            Decision::Unknown(field) => Some(format!("unknown_{field}")),
        }
    }
}

/// Why a field keeps a session out, or `None` when it lets it through.
type Check = Option<Decision>;

impl Selector {
    /// Decides one session: exclusions first (they win, and an unknown value is spared),
    /// then every inclusion given.
    pub fn decide(&self, facts: &Facts<'_>) -> Decision {
        let exclusions = [
            exclude(
                "exclude_logins",
                &self.exclude_logins,
                facts.login,
                |v, s| v == s,
            ),
            exclude(
                "exclude_databases",
                &self.exclude_databases,
                facts.database,
                |v, s| v == s,
            ),
            exclude(
                "exclude_application_names",
                &self.exclude_application_names,
                facts.application_name,
                |v, p: &Pattern| p.matches(v),
            ),
        ];
        let inclusions = [
            self.named(facts),
            include("logins", &self.logins, facts.login, |v, s| v == s),
            include("databases", &self.databases, facts.database, |v, s| v == s),
            include(
                "application_names",
                &self.application_names,
                facts.application_name,
                |v, p: &Pattern| p.matches(v),
            ),
            include(
                "client_addrs",
                &self.client_addrs,
                facts.client_addr,
                |v, b: &AddrBlock| b.contains(v),
            ),
            self.started(facts),
            include("states", &self.states, facts.state, |v, s| v == *s),
            self.lasted(facts),
        ];
        exclusions
            .into_iter()
            .chain(inclusions)
            .flatten()
            .next()
            .unwrap_or(Decision::Selected)
    }

    /// `sessions`: some ref has the session's id and, when the ref carries one, exactly its
    /// start time. The id alone could be a reused one, so a ref with a start never matches a
    /// session whose start is unknown (spared) or another (excluded: a reused id).
    fn named(&self, facts: &Facts<'_>) -> Check {
        if self.sessions.is_empty() {
            return None;
        }
        let pid = match facts.pid {
            Seen::Known(pid) => pid,
            _ => return Some(Decision::Unknown("pid")),
        };
        let mut unknown_start = false;
        for r in self.sessions.iter().filter(|r| r.pid == pid) {
            match (r.backend_start, facts.backend_start) {
                (None, _) => return None,
                (Some(wanted), Seen::Known(start)) if wanted == start => return None,
                (Some(_), Seen::Unknown) => unknown_start = true,
                _ => {}
            }
        }
        Some(if unknown_start {
            Decision::Unknown("backend_start")
        } else {
            Decision::Excluded("sessions".into())
        })
    }

    fn started(&self, facts: &Facts<'_>) -> Check {
        let bounds = [
            ("started_before", self.started_before, true),
            ("started_after", self.started_after, false),
        ];
        for (field, bound, before) in bounds {
            let Some(bound) = bound else { continue };
            let Seen::Known(start) = facts.backend_start else {
                return Some(Decision::Unknown("backend_start"));
            };
            let holds = if before {
                start < bound
            } else {
                start >= bound
            };
            if !holds {
                return Some(Decision::Excluded(field.into()));
            }
        }
        None
    }

    fn lasted(&self, facts: &Facts<'_>) -> Check {
        let in_state = |state: SessionState, at_least: Duration, field: &'static str| match (
            facts.state,
            facts.state_since,
        ) {
            (Seen::Unknown, _) => Some(Decision::Unknown("state")),
            (Seen::Known(s), Seen::Known(since)) if s == state => {
                (!at_least_ago(since, facts.now, at_least))
                    .then(|| Decision::Excluded(field.into()))
            }
            (Seen::Known(s), Seen::Unknown) if s == state => Some(Decision::Unknown("state_since")),
            _ => Some(Decision::Excluded(field.into())),
        };
        if let Some(d) = self.idle_for
            && let Some(out) = in_state(SessionState::Idle, d, "idle_for")
        {
            return Some(out);
        }
        if let Some(d) = self.active_for
            && let Some(out) = in_state(SessionState::Active, d, "active_for")
        {
            return Some(out);
        }
        if let Some(d) = self.in_transaction_for {
            return match facts.xact_start {
                Seen::Unknown => Some(Decision::Unknown("xact_start")),
                Seen::Absent => Some(Decision::Excluded("in_transaction_for".into())),
                Seen::Known(start) => (!at_least_ago(start, facts.now, d))
                    .then(|| Decision::Excluded("in_transaction_for".into())),
            };
        }
        None
    }
}

/// Whether `since` lies at least `d` before `now`. A `since` after `now` (clocks read a
/// moment apart) has lasted zero.
fn at_least_ago(since: DateTime<Utc>, now: DateTime<Utc>, d: Duration) -> bool {
    let lasted = (now - since).to_std().unwrap_or(Duration::ZERO);
    lasted >= d
}

/// An exclusion: keeps the session out when its value matches one of `rules`, and also when
/// the value is unknown (it might match).
fn exclude<V: Copy, R: std::fmt::Display>(
    field: &'static str,
    rules: &[R],
    value: Seen<V>,
    matches: impl Fn(V, &R) -> bool,
) -> Check {
    if rules.is_empty() {
        return None;
    }
    match value {
        Seen::Unknown => Some(Decision::Unknown(unknown_name(field))),
        Seen::Absent => None,
        Seen::Known(v) => rules
            .iter()
            .find(|r| matches(v, r))
            .map(|r| Decision::Excluded(format!("{field}: {r}"))),
    }
}

/// An inclusion: keeps the session out unless its value matches one of `rules`; an unknown
/// value never matches.
fn include<V: Copy, R>(
    field: &'static str,
    rules: &[R],
    value: Seen<V>,
    matches: impl Fn(V, &R) -> bool,
) -> Check {
    if rules.is_empty() {
        return None;
    }
    match value {
        Seen::Unknown => Some(Decision::Unknown(unknown_name(field))),
        Seen::Known(v) if rules.iter().any(|r| matches(v, r)) => None,
        _ => Some(Decision::Excluded(field.into())),
    }
}

/// The session field a selector field reads (`exclude_databases` reads `database`).
fn unknown_name(field: &'static str) -> &'static str {
    match field {
        "logins" | "exclude_logins" => "login",
        "databases" | "exclude_databases" => "database",
        "application_names" | "exclude_application_names" => "application_name",
        "client_addrs" => "client_addr",
        "states" => "state",
        other => other,
    }
}
