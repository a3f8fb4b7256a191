//! Session policies: standing orders from `[[policies]]`, and each target's sweep as a
//! policy of its own kind (`sweep:<target>`). A door beside the operator API: each firing
//! that selects sessions is an action like any other (planned, queued, audited under
//! `policy:<name>`), evaluated on schedule ([`schedule`]), on an operator's request, or for
//! an Alertmanager alert ([`evaluate`]).
//!
//! May call `runner`, `context`, `resolve`, `queue`, `terminate`, `audit`, `store`,
//! `config`, `select`. Not `http`, `operator` or `intake`, which call it.

mod evaluate;
mod schedule;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use evaluate::{Evaluation, Outcome, TargetEvaluation, Trigger, evaluate};
pub use schedule::{run_policies, run_sweep_policies};

use crate::audit::{AuditError, Entry, Kind};
use crate::config::{Config, Enforcement, PolicyConfig, SWEEP_PREFIX, SweepConfig};
use crate::context::Context;
use crate::store::{LastEvaluation, StoreError};

/// The actor a sweep's actions and records name.
pub const SWEEP_ACTOR: &str = "sweeper";

/// Why a policy could not be listed, run or resumed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// No configured policy (or sweep) has this name.
    #[error("no policy is named {0:?}")]
    Unknown(String),
    /// The request cannot be carried out as asked (a target the policy does not cover).
    #[error("{0}")]
    Invalid(String),
    /// The store could not be read or written.
    #[error("policy state unavailable: {0}")]
    Store(#[from] StoreError),
    /// The audit trail refused a record.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The firing's action could not be submitted or recorded.
    #[error(transparent)]
    Run(#[from] crate::runner::RunError),
}

/// A policy as sever runs it: a configured rule, or a target's sweep.
#[derive(Debug, Clone, Copy)]
pub enum Policy<'a> {
    /// A `[[policies]]` entry.
    Rule(&'a PolicyConfig),
    /// `[targets.<id>.sweep]`: enforcing, on its own target, never pausing.
    Sweep {
        /// The swept target.
        target: &'a str,
        /// Its sweep settings.
        sweep: &'a SweepConfig,
    },
}

impl Policy<'_> {
    /// Its name: the rule's, or `sweep:<target>`.
    pub fn name(&self) -> String {
        match self {
            Policy::Rule(p) => p.name.clone(),
            Policy::Sweep { target, .. } => format!("{SWEEP_PREFIX}{target}"),
        }
    }

    /// How often it is evaluated.
    pub fn interval(&self) -> Duration {
        match self {
            Policy::Rule(p) => p.interval,
            Policy::Sweep { sweep, .. } => sweep.interval,
        }
    }

    /// The targets it covers.
    pub fn targets(&self, config: &Config) -> Vec<String> {
        match self {
            Policy::Rule(p) => p.target_ids(config),
            Policy::Sweep { target, .. } => vec![(*target).to_owned()],
        }
    }

    /// Evaluations in a row that end sessions before it pauses itself.
    pub fn pause_after(&self) -> u32 {
        match self {
            Policy::Rule(p) => p.pause_after,
            // A sweep that keeps finding expired dynamic logins is doing its job.
            Policy::Sweep { .. } => u32::MAX,
        }
    }

    /// The actor its actions and records name.
    pub fn actor(&self) -> String {
        match self {
            Policy::Rule(p) => format!("policy:{}", p.name),
            Policy::Sweep { .. } => SWEEP_ACTOR.to_owned(),
        }
    }
}

/// Every policy `config` runs: the rules in order, then the sweeps by target.
pub fn all(config: &Config) -> Vec<Policy<'_>> {
    let rules = config.policies.iter().map(Policy::Rule);
    let sweeps = config.targets.iter().filter_map(|(target, t)| {
        t.sweep
            .as_ref()
            .map(|sweep| Policy::Sweep { target, sweep })
    });
    rules.chain(sweeps).collect()
}

/// The policy named `name`.
pub fn find<'a>(config: &'a Config, name: &str) -> Result<Policy<'a>, PolicyError> {
    all(config)
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| PolicyError::Unknown(name.to_owned()))
}

/// A policy's configuration and state, as `GET /v1/policies` and `sever policies` show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    /// Its name.
    pub name: String,
    /// Where it is configured.
    pub kind: PolicyKind,
    /// The targets it covers.
    pub targets: Vec<String>,
    /// Whether it ends what it selects (a sweep always does).
    pub enforcement: Enforcement,
    /// Its configuration as written (rules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<PolicyConfig>,
    /// How often it is evaluated.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub interval: Duration,
    /// Whether one of its windows is open now (`true` without windows).
    pub in_window: bool,
    /// When it paused itself and why; `null` while it runs.
    pub paused: Option<Paused>,
    /// Evaluations in a row that ended sessions.
    pub streak: i64,
    /// Its last evaluation; `null` before the first.
    pub last_evaluation: Option<LastView>,
    /// When it is next evaluated; `null` before this or another replica scheduled it.
    pub next_evaluation: Option<String>,
}

/// Where a policy is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// From `[[policies]]`.
    Rule,
    /// From `[targets.<id>.sweep]`.
    Sweep,
}

impl PolicyKind {
    /// The word the API and the command line show.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Rule => "rule",
            PolicyKind::Sweep => "sweep",
        }
    }
}

/// A pause.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Paused {
    /// When.
    pub at: String,
    /// Why.
    pub reason: String,
}

/// A policy's last evaluation, as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LastView {
    /// When.
    pub at: String,
    /// What came of it (see [`Outcome`]).
    pub outcome: String,
    /// The action it created, if it selected sessions.
    pub action_id: Option<String>,
    /// Sessions picked as victims.
    pub matched: i64,
    /// Sessions ended.
    pub ended: i64,
    /// What failed, if a target did.
    pub error: Option<String>,
}

impl From<LastEvaluation> for LastView {
    fn from(l: LastEvaluation) -> Self {
        Self {
            at: l.at,
            outcome: l.outcome,
            action_id: l.action_id,
            matched: l.matched,
            ended: l.ended,
            error: l.error,
        }
    }
}

/// Every policy with its state.
pub async fn list(ctx: &Context) -> Result<Vec<PolicyView>, PolicyError> {
    let states = ctx.store.policy_states().await?;
    let now = Utc::now();
    let views = all(&ctx.config)
        .into_iter()
        .map(|policy| {
            let name = policy.name();
            let state = states.iter().find(|s| s.name == name).cloned();
            let (kind, targets, enforcement, config, in_window) = match policy {
                Policy::Rule(p) => (
                    PolicyKind::Rule,
                    p.target_ids(&ctx.config),
                    p.enforcement,
                    Some(p.clone()),
                    in_window(&ctx.config, p, now),
                ),
                Policy::Sweep { target, .. } => (
                    PolicyKind::Sweep,
                    vec![target.to_owned()],
                    Enforcement::Enforce,
                    None,
                    true,
                ),
            };
            PolicyView {
                name,
                kind,
                targets,
                enforcement,
                config,
                interval: policy.interval(),
                in_window,
                paused: state
                    .as_ref()
                    .and_then(|s| s.paused.clone())
                    .map(|(at, reason)| Paused { at, reason }),
                streak: state.as_ref().map_or(0, |s| s.streak),
                last_evaluation: state.as_ref().and_then(|s| s.last.clone()).map(Into::into),
                next_evaluation: state.map(|s| s.next_due),
            }
        })
        .collect();
    Ok(views)
}

/// The word the API and the command line show for `enforcement`.
pub fn enforcement_word(enforcement: Enforcement) -> &'static str {
    match enforcement {
        Enforcement::Observe => "observe",
        Enforcement::Enforce => "enforce",
    }
}

/// Whether `policy` may enforce at `at`: it has no windows, or one of them is open.
pub fn in_window(config: &Config, policy: &PolicyConfig, at: DateTime<Utc>) -> bool {
    policy.windows.is_empty()
        || policy
            .windows
            .iter()
            .filter_map(|name| config.window(name))
            .any(|w| w.contains(at))
}

/// Resumes a paused policy, recording who did; `false` if it was not paused.
pub async fn resume(ctx: &Context, name: &str, actor: &str) -> Result<bool, PolicyError> {
    let policy = find(&ctx.config, name)?;
    let resumed = ctx.store.resume_policy(&policy.name()).await?;
    if resumed {
        ctx.audit
            .append(Entry::new(
                Kind::PolicyResumed,
                actor,
                None,
                serde_json::json!({"policy": policy.name()}),
            ))
            .await?;
        tracing::info!(policy = %policy.name(), actor, "policy resumed");
    }
    Ok(resumed)
}
