//! The plan of a sweep: on one target with a `[targets.<id>.sweep]` table, the sessions of
//! dropped logins and of expired logins matching its pattern. Pure, like the rest of
//! `resolve`: the runner carries the plan out.

use uuid::Uuid;

use crate::action::{Origin, Plan, Step};
use crate::config::{Config, SweepConfig};
use crate::select::Ending;
use crate::terminate::Scope;

/// Why a target cannot be swept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SweepError {
    /// No target with this id is configured.
    #[error("unknown target {0:?}")]
    UnknownTarget(String),
    /// The target has no `[targets.<id>.sweep]` table, so it cannot be swept.
    #[error("target {0:?} has no sweep configured ([targets.{0}.sweep])")]
    NoSweep(String),
}

/// The sweep settings of `target`, or why it cannot be swept.
pub fn config<'a>(config: &'a Config, target: &str) -> Result<&'a SweepConfig, SweepError> {
    config
        .targets
        .get(target)
        .ok_or_else(|| SweepError::UnknownTarget(target.to_owned()))?
        .sweep
        .as_ref()
        .ok_or_else(|| SweepError::NoSweep(target.to_owned()))
}

/// The plan of a sweep of `target`; its work ([`Plan::work`]) is the sweep, with the pattern
/// its origin names.
pub fn plan(config: &Config, target: &str, dry_run: bool) -> Result<Plan, SweepError> {
    let pattern = self::config(config, target)?.pattern.clone();
    let plan = Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Sweep {
            target: target.to_owned(),
            pattern,
        },
        scope: Some(Scope::All),
        dry_run,
        reason: None,
        // No named logins: the sweep finds its own, by pattern and by absence.
        cutoff_defaulted: false,
        ending: Ending::TERMINATE,
        selection: None,
        schedule: None,
        steps: vec![Step {
            target: target.to_owned(),
            logins: Vec::new(),
            protected: config.protected_on(target),
        }],
    };
    Ok(plan)
}
