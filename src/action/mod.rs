//! The action's vocabulary: what an action is ([`Plan`], its [`Step`]s and [`Origin`]), what
//! each step does ([`Work`]) and what came of it ([`TargetReport`], [`ActionReport`]), with
//! the audit records a finished step or action leaves ([`records`]).
//!
//! Below the queue, which stores and reports these inside its transactions; above
//! `terminate` (scopes, sessions, outcomes), `audit` (records) and `config` (policies). It
//! calls nothing: resolution builds plans, the runner carries them out.

pub mod records;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{PreviousUserPolicy, RotationPolicy};
use crate::terminate::{Scope, TerminateOutcome};

pub use records::{completed_record, target_records};

/// `rotated`: the old secret stopped being valid; `revoked`: the login must lose every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Terminate sessions that predate the rotation (per the credential's policy).
    Rotated,
    /// Terminate every session.
    Revoked,
}

/// Where a rotation was reported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AwsSource {
    /// The rotation Lambda's hook call after `finishSecret`.
    LambdaHook,
    /// An EventBridge API destination.
    #[serde(rename = "eventbridge")]
    EventBridge,
    /// An SNS HTTPS subscription carrying an EventBridge event.
    Sns,
}

/// What sever decided about the previous user of an alternating-users rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousUser {
    /// The login that is `AWSPREVIOUS` now.
    pub login: String,
    /// `keep` or `terminate`, from the credential's `aws.previous_user`.
    pub decision: PreviousUserPolicy,
}

/// Where an action came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "origin", rename_all = "snake_case")]
pub enum Origin {
    /// A rotation event for a configured credential.
    Event {
        /// Credential id.
        credential: String,
        /// Rotated or revoked.
        kind: EventKind,
        /// The credential's policy at the time.
        policy: RotationPolicy,
    },
    /// An operator's revocation of a login.
    Revocation {
        /// The login.
        login: String,
    },
    /// A rotation reported by AWS Secrets Manager (Lambda hook, EventBridge or SNS).
    Aws {
        /// Credential id.
        credential: String,
        /// The secret's ARN.
        secret_arn: String,
        /// The version that became `AWSCURRENT`.
        version_id: String,
        /// Which intake path reported it.
        source: AwsSource,
        /// The credential's policy at the time.
        policy: RotationPolicy,
        /// The `AWSCURRENT` login.
        current_user: String,
        /// Alternating users: the previous login and what was decided about it.
        previous_user: Option<PreviousUser>,
    },
    /// A rotation reported by HashiCorp Vault (forwarded event, subscription or watcher).
    Vault {
        /// Credential id; `None` for a role found through a watched mount.
        credential: Option<String>,
        /// Namespace, mount and role or KV path, as Vault names them.
        vault_path: String,
        /// Which intake path reported it (`event`, `subscriber`, `watcher`).
        source: String,
        /// The credential's policy at the time.
        policy: RotationPolicy,
    },
    /// A periodic or manual sweep for sessions of dropped or expired logins on one target.
    Sweep {
        /// Target id.
        target: String,
        /// The `LIKE` pattern of logins checked for expiry.
        pattern: String,
    },
}

/// One target's part of a plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Step {
    /// Target id.
    pub target: String,
    /// Logins whose sessions are in scope there.
    pub logins: Vec<String>,
    /// Logins never terminated there.
    pub protected: BTreeSet<String>,
}

/// Everything an action will do, decided before anything is done.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Unique id of the action, returned to the caller and on every audit record.
    pub action_id: Uuid,
    /// What asked for it.
    #[serde(flatten)]
    pub origin: Origin,
    /// Which sessions; `None` when the credential's policy is to terminate nothing.
    pub scope: Option<Scope>,
    /// Change nothing, report what would happen.
    pub dry_run: bool,
    /// Why, as given by the caller.
    pub reason: Option<String>,
    /// The cutoff is only "when sever learned of it" (the event named no time), so an engine
    /// that records when the password changed may narrow it (SQL Server's
    /// `PasswordLastSetTime`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cutoff_defaulted: bool,
    /// Per-target work.
    pub steps: Vec<Step>,
}

impl Plan {
    /// What each step does on its target; `None` when the plan terminates nothing. Derived
    /// from the plan, which stores the scope once: a sweep's plan (origin `sweep`) sweeps
    /// with its pattern, any other terminates its logins' sessions in its scope.
    pub fn work(&self) -> Option<Work> {
        match (&self.origin, self.scope) {
            (_, None) => None,
            (Origin::Sweep { pattern, .. }, Some(_)) => Some(Work::Sweep {
                pattern: pattern.clone(),
            }),
            (_, Some(scope)) => Some(Work::Terminate(scope)),
        }
    }
}

/// What each step of a plan does on its target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// Terminate the step's logins' sessions in this scope.
    Terminate(Scope),
    /// Sweep for sessions of dropped logins, and of expired logins matching the pattern.
    Sweep {
        /// `LIKE` pattern of the logins checked for expiry.
        pattern: String,
    },
}

/// Overall result of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every target answered, every signalled session is gone.
    Completed,
    /// A target failed, a session could not be terminated, or one is still connected.
    Incomplete,
}

/// What happened on one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    /// Target id.
    pub target: String,
    /// Logins in scope there.
    pub logins: Vec<String>,
    /// Sessions found in scope (eligible and skipped).
    pub found: usize,
    /// Why the target as a whole failed, if it did.
    pub error: Option<String>,
    /// Sessions by fate.
    #[serde(flatten)]
    pub outcome: TerminateOutcome,
}

impl TargetReport {
    /// Whether the target answered and every signalled session is gone.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.outcome.failed.is_empty() && self.outcome.remaining.is_empty()
    }
}

/// The finished result of an action, as returned by `?wait=true`, revocations and the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionReport {
    /// The action's id, also on every audit record it wrote.
    pub action_id: Uuid,
    /// What asked for it.
    #[serde(flatten)]
    pub origin: Origin,
    /// Which sessions were in scope; `null` when the policy terminates nothing.
    pub scope: Option<Scope>,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Completed or incomplete.
    pub status: Status,
    /// Per target.
    pub targets: Vec<TargetReport>,
}

/// The report of an action from its plan and its finished steps.
pub fn report(plan: &Plan, targets: Vec<TargetReport>) -> ActionReport {
    let status = if targets.iter().all(TargetReport::ok) {
        Status::Completed
    } else {
        Status::Incomplete
    };
    ActionReport {
        action_id: plan.action_id,
        origin: plan.origin.clone(),
        scope: plan.scope,
        dry_run: plan.dry_run,
        status,
        targets,
    }
}
