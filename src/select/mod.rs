//! The session selector: which sessions an operation reaches, in the same words everywhere
//! (the listing's query parameters, revocation bodies, CLI flags in kebab-case, and the
//! config's policies).
//!
//! Fields combine with AND, the values of one field with OR, and exclusions always win. An
//! empty list is a field not given: it narrows nothing (so `sessions: []` beside
//! `all_logins` is refused as narrowing nothing, never taken as "every session"). A
//! value the engine could not read (no privilege to see it, a host name where an address was
//! asked for) never matches an inclusion and is always spared by an exclusion, so an
//! operation reaches only sessions it can show are selected. Engines narrow with their
//! catalogue query; the exact decision is made here ([`Selector::decide`]), once, for every
//! engine.
//!
//! `sessions` names single sessions ([`SessionRef`]): a session is selected by it only when
//! one ref has its id and its exact start time (ids are reused; a reused id with another
//! start is excluded by `sessions`, and a session whose start could not be read is spared as
//! unknown). Where the engine records no start (MySQL, MariaDB) a ref carries the id alone.
//! It is for one operation on sessions seen a moment ago, never for a standing policy.
//!
//! Depends on no other module of the crate, so the config, the engines and the doors
//! can all use it.

mod decide;
mod mode;
mod session_ref;
mod values;
mod victims;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use decide::{Decision, Facts, Seen};
pub use mode::{Ending, MAX_GRACE, Mode};
pub use session_ref::SessionRef;
pub use values::{AddrBlock, Pattern, SessionState};
pub use victims::{Age, MAX_SHARE_PERCENT, Pick, Picked, Victims, When, pick, share_cap};

/// A refused selector: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SelectorError {
    /// The field as requests spell it.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// Which sessions to reach. Every field given narrows; see the module docs for how they
/// combine. `login`, `database`, `application_name` and `client_addr` are accepted as aliases
/// of the list fields (the listing's parameters before the selector existed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Only these logins.
    #[serde(
        default,
        alias = "login",
        deserialize_with = "values::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub logins: Vec<String>,
    /// Never these logins.
    #[serde(
        default,
        deserialize_with = "values::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exclude_logins: Vec<String>,
    /// Only sessions on these databases.
    #[serde(
        default,
        alias = "database",
        deserialize_with = "values::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub databases: Vec<String>,
    /// Never sessions on these databases.
    #[serde(
        default,
        deserialize_with = "values::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exclude_databases: Vec<String>,
    /// Only sessions whose application name matches one of these (exact, or `*` globs).
    #[serde(
        default,
        alias = "application_name",
        deserialize_with = "values::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub application_names: Vec<Pattern>,
    /// Never sessions whose application name matches one of these.
    #[serde(
        default,
        deserialize_with = "values::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exclude_application_names: Vec<Pattern>,
    /// Only sessions from these client addresses or CIDR blocks.
    #[serde(
        default,
        alias = "client_addr",
        deserialize_with = "values::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub client_addrs: Vec<AddrBlock>,
    /// Only sessions that connected before this moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_before: Option<DateTime<Utc>>,
    /// Only sessions that connected at or after this moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_after: Option<DateTime<Utc>>,
    /// Only sessions in one of these states.
    #[serde(
        default,
        deserialize_with = "values::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub states: Vec<SessionState>,
    /// Only sessions idle for at least this long.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "5m")]
    pub idle_for: Option<Duration>,
    /// Only sessions running their current statement for at least this long.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "5m")]
    pub active_for: Option<Duration>,
    /// Only sessions with a transaction open for at least this long.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "5m")]
    pub in_transaction_for: Option<Duration>,
    /// Only these single sessions, each `{"pid", "backend_start"}` (or `"PID@START"`): the
    /// id and its exact start time, so a reused id never matches; the id alone where the
    /// engine records no start (MySQL, MariaDB).
    #[serde(
        default,
        alias = "session",
        deserialize_with = "values::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub sessions: Vec<SessionRef>,
}

impl Selector {
    /// The fields given, as requests spell them: an engine that cannot evaluate one of them
    /// refuses the selector by that name.
    pub fn fields(&self) -> Vec<&'static str> {
        let given = [
            ("logins", !self.logins.is_empty()),
            ("exclude_logins", !self.exclude_logins.is_empty()),
            ("databases", !self.databases.is_empty()),
            ("exclude_databases", !self.exclude_databases.is_empty()),
            ("application_names", !self.application_names.is_empty()),
            (
                "exclude_application_names",
                !self.exclude_application_names.is_empty(),
            ),
            ("client_addrs", !self.client_addrs.is_empty()),
            ("started_before", self.started_before.is_some()),
            ("started_after", self.started_after.is_some()),
            ("states", !self.states.is_empty()),
            ("idle_for", self.idle_for.is_some()),
            ("active_for", self.active_for.is_some()),
            ("in_transaction_for", self.in_transaction_for.is_some()),
            ("sessions", !self.sessions.is_empty()),
        ];
        given
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect()
    }

    /// Refuses a selector that contradicts itself, so it is not mistaken for one that
    /// matched nothing.
    pub fn validate(&self) -> Result<(), SelectorError> {
        if let (Some(after), Some(before)) = (self.started_after, self.started_before)
            && after >= before
        {
            return Err(SelectorError {
                field: "started_after",
                problem: format!("{after} is not earlier than started_before ({before})"),
            });
        }
        Ok(())
    }

    /// The fields other than `logins` that really narrow the selection at `now`: exclusions
    /// never do, nor do trivial values (`*`, a `/0` block, a zero duration, every state, a
    /// time in the future, an empty `sessions`). An operation over every login needs at least
    /// one.
    pub fn narrowing(&self, now: DateTime<Utc>) -> Vec<&'static str> {
        let all_states = SessionState::ALL.iter().all(|s| self.states.contains(s));
        let nonzero = |d: Option<Duration>| d.is_some_and(|d| !d.is_zero());
        let past = |t: Option<DateTime<Utc>>| t.is_some_and(|t| t <= now);
        let narrowing = [
            ("databases", !self.databases.is_empty()),
            (
                "application_names",
                !self.application_names.is_empty()
                    && !self
                        .application_names
                        .iter()
                        .any(Pattern::matches_everything),
            ),
            (
                "client_addrs",
                !self.client_addrs.is_empty()
                    && !self.client_addrs.iter().any(AddrBlock::is_everything),
            ),
            ("started_before", past(self.started_before)),
            ("started_after", past(self.started_after)),
            ("states", !self.states.is_empty() && !all_states),
            ("idle_for", nonzero(self.idle_for)),
            ("active_for", nonzero(self.active_for)),
            ("in_transaction_for", nonzero(self.in_transaction_for)),
            // Each ref names at most one session; an empty list names none and is no field.
            ("sessions", !self.sessions.is_empty()),
        ];
        narrowing
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect()
    }
}

#[cfg(test)]
mod tests;
