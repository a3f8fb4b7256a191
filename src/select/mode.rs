//! How selected sessions are ended: the `mode` (and `grace`) of revocations, credentials and
//! policies, in the same words everywhere.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SelectorError;

/// The longest grace an operator may give: a graceful revocation holds its action (and its
/// target's share of the queue) for that long.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 60);

/// How a selected session is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// End the session at once.
    #[default]
    Terminate,
    /// End its running statement and keep the connection (the credential stays in use).
    Cancel,
    /// Wait up to the grace, signalling nothing, for the running statement and the open
    /// transaction to finish; then cancel; then terminate what is left.
    Graceful,
}

impl Mode {
    /// Whether it is the default, `terminate`.
    pub fn is_terminate(&self) -> bool {
        *self == Mode::Terminate
    }

    /// The word requests and reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Terminate => "terminate",
            Mode::Cancel => "cancel",
            Mode::Graceful => "graceful",
        }
    }
}

/// A mode with its grace, as requests and the config spell them (`mode`, `grace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ending {
    /// How (left out when `terminate`, the default).
    #[serde(default, skip_serializing_if = "Mode::is_terminate")]
    pub mode: Mode,
    /// How long `graceful` waits before it cancels (e.g. `30s`); only with `graceful`.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub grace: Option<Duration>,
}

impl Ending {
    /// Ends at once: what rotations and `revoked` events do.
    pub const TERMINATE: Ending = Ending {
        mode: Mode::Terminate,
        grace: None,
    };

    /// Refuses a grace without `graceful`, `graceful` without a grace (or a zero one), and a
    /// grace longer than `max`.
    pub fn validate(&self, max: Duration) -> Result<(), SelectorError> {
        let problem = |problem: String| SelectorError {
            field: "grace",
            problem,
        };
        match (self.mode, self.grace) {
            (Mode::Graceful, None) => Err(problem("mode graceful needs a grace, e.g. 30s".into())),
            (Mode::Graceful, Some(g)) if g.is_zero() => {
                Err(problem("must be longer than zero".into()))
            }
            (Mode::Graceful, Some(g)) if g > max => Err(problem(format!(
                "{} is longer than the {} allowed",
                humantime::format_duration(g),
                humantime::format_duration(max)
            ))),
            (mode, Some(_)) if mode != Mode::Graceful => Err(problem(format!(
                "is only for mode graceful, not {}",
                mode.as_str()
            ))),
            _ => Ok(()),
        }
    }

    /// The grace, zero unless graceful.
    pub fn grace(&self) -> Duration {
        match self.mode {
            Mode::Graceful => self.grace.unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grace_goes_with_graceful_and_within_its_bound() {
        let max = Duration::from_secs(300);
        let ending = |mode, grace: Option<u64>| Ending {
            mode,
            grace: grace.map(Duration::from_secs),
        };
        assert!(ending(Mode::Terminate, None).validate(max).is_ok());
        assert!(ending(Mode::Cancel, None).validate(max).is_ok());
        assert!(ending(Mode::Graceful, Some(30)).validate(max).is_ok());
        assert!(ending(Mode::Graceful, Some(300)).validate(max).is_ok());
        for bad in [
            ending(Mode::Graceful, None),
            ending(Mode::Graceful, Some(0)),
            ending(Mode::Graceful, Some(301)),
            ending(Mode::Cancel, Some(30)),
            ending(Mode::Terminate, Some(30)),
        ] {
            let e = bad.validate(max).unwrap_err();
            assert_eq!(e.field, "grace", "{bad:?}");
        }
        let parsed: Ending = serde_json::from_str(r#"{"mode":"graceful","grace":"30s"}"#).unwrap();
        assert_eq!(parsed, ending(Mode::Graceful, Some(30)));
        assert!(serde_json::from_str::<Ending>(r#"{"mode":"kill"}"#).is_err());
    }
}
