//! The action's vocabulary: what an action is ([`Plan`], its [`Step`]s and [`Origin`]), what
//! each step does ([`Work`]) and what came of it ([`TargetReport`], [`ActionReport`]), with
//! the audit records a finished step or action leaves ([`records`]).
//!
//! Below the queue, which stores and reports these inside its transactions; above
//! `terminate` (scopes, sessions, outcomes), `audit` (records) and `config` (policies). It
//! calls nothing: resolution builds plans, the runner carries them out.

pub mod records;
mod schedule;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{PreviousUserPolicy, RotationPolicy};
use crate::select::{Ending, Mode, Pick, Selector};
use crate::terminate::{Scope, Session, SkipReason, TerminateOutcome, same_session};

pub use crate::config::ScheduleRequest;
pub use records::{completed_record, target_records};
pub use schedule::Schedule;

/// `rotated`: the old secret stopped being valid; `revoked`: the login must lose every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Terminate sessions that predate the rotation (per the credential's policy).
    Rotated,
    /// Terminate every session.
    Revoked,
}

/// Where a rotation was reported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PreviousUser {
    /// The login that is `AWSPREVIOUS` now.
    pub login: String,
    /// `keep` or `terminate`, from the credential's `aws.previous_user`.
    pub decision: PreviousUserPolicy,
}

/// Where an action came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
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
    /// An operator's revocation: of one login (the incident path), or of the sessions a
    /// selector selects (the plan's `selection` says which).
    Revocation {
        /// The login, when the revocation names exactly one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        login: Option<String>,
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
    /// A login lock: the login is kept out of each target of the plan (and, with
    /// `terminate`, its sessions end) until `until`, or until lifted. The lock's id is the
    /// action's.
    Lock {
        /// The login kept out.
        login: String,
        /// When the lock ends by itself; `None` only for an explicitly permanent lock.
        until: Option<DateTime<Utc>>,
        /// Also end the login's sessions once it is locked.
        terminate: bool,
        /// The action that ends it at `until`: called off with it, if it is called off
        /// before it acts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expiry: Option<Uuid>,
    },
    /// The end of a login lock (its expiry, or an operator lifting it): the login's gate is
    /// restored once no other lock on it is in force.
    Unlock {
        /// The lock that ends.
        lock_id: Uuid,
        /// Its login.
        login: String,
        /// `expiry` or the operator who lifted it.
        ended_by: String,
    },
    /// A database drain: new connections to `database` are refused on the plan's target
    /// and its sessions end (in the plan's mode), but those `spare` excludes and protected
    /// logins, until `until` or until lifted. The drain's id is the action's.
    Drain {
        /// The database kept clear.
        database: String,
        /// When it re-opens by itself; `None` only for an explicitly permanent drain.
        until: Option<DateTime<Utc>>,
        /// Exclusions only (`exclude_logins`, `exclude_application_names`): the sessions
        /// the drain spares, from the request's `except` (boxed: the selector is large).
        #[serde(default)]
        spare: Box<Selector>,
        /// MySQL/MariaDB, which has no per-database gate: the accounts with sessions in the
        /// database are locked instead, server-wide, each as a lock under the drain's id.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        lock_accounts: bool,
        /// The action that re-opens it at `until`: called off with it, if it is called off
        /// before it acts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expiry: Option<Uuid>,
    },
    /// The end of a drain (its expiry, or an operator lifting it): the database re-opens
    /// once no other drain of it is in force.
    Undrain {
        /// The drain that ends.
        drain_id: Uuid,
        /// Its database.
        database: String,
        /// `expiry` or the operator who lifted it.
        ended_by: String,
    },
    /// A policy's firing: its evaluation selected sessions to end (or, observing, to
    /// report). Its actor is `policy:<name>`.
    Policy {
        /// The policy.
        policy: String,
        /// What evaluated it: `schedule`, `manual` (an operator) or `alert` (Alertmanager).
        trigger: String,
        /// For `alert`: the alert's name and fingerprint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alert: Option<String>,
        /// It only reports: observing, outside nothing, or mode `report`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        observe: bool,
    },
    /// A periodic or manual sweep for sessions of dropped or expired logins on one target.
    Sweep {
        /// Target id.
        target: String,
        /// The `LIKE` pattern of logins checked for expiry.
        pattern: String,
    },
}

impl Origin {
    /// The origin's name, as plans and reports spell it (`event`, `revocation`, `lock`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Origin::Event { .. } => "event",
            Origin::Revocation { .. } => "revocation",
            Origin::Aws { .. } => "aws",
            Origin::Vault { .. } => "vault",
            Origin::Lock { .. } => "lock",
            Origin::Unlock { .. } => "unlock",
            Origin::Drain { .. } => "drain",
            Origin::Undrain { .. } => "undrain",
            Origin::Sweep { .. } => "sweep",
            Origin::Policy { .. } => "policy",
        }
    }

    /// Every name [`Origin::name`] gives.
    pub const NAMES: [&'static str; 10] = [
        "event",
        "revocation",
        "aws",
        "vault",
        "lock",
        "unlock",
        "drain",
        "undrain",
        "sweep",
        "policy",
    ];
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
    /// How sessions are ended; `terminate` unless a revocation or a credential's config
    /// says otherwise.
    #[serde(default, skip_serializing_if = "is_terminate")]
    pub ending: Ending,
    /// The selector a revocation or policy chose its sessions with; `None` for the login
    /// and cutoff of a rotation or an incident revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
    /// When it acts and is announced, if not at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Per-target work.
    pub steps: Vec<Step>,
}

fn is_terminate(ending: &Ending) -> bool {
    *ending == Ending::TERMINATE
}

/// Which sessions a selector plan reaches, and its bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Which sessions.
    pub selector: Selector,
    /// The selector names no login on purpose: every login's sessions are candidates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_logins: bool,
    /// Per target, the most sessions it may end: its count in the dry run that the
    /// revocation's `expect_count` was checked against.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub at_most: BTreeMap<String, usize>,
    /// A policy's firing: its threshold and victims rule, checked again on each target
    /// (`at_most` then caps the victims rather than refusing a grown selection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pick: Option<Pick>,
}

impl Plan {
    /// What each step does on its target; `None` when the plan terminates nothing. Derived
    /// from the plan, which stores the scope once: a sweep's plan (origin `sweep`) sweeps
    /// with its pattern, any other terminates its logins' sessions in its scope.
    pub fn work(&self) -> Option<Work> {
        if self.schedule.as_ref().is_some_and(|s| s.expired) {
            return None;
        }
        if let Some(selection) = &self.selection {
            return Some(Work::Select(Box::new(selection.clone())));
        }
        match &self.origin {
            Origin::Lock {
                login,
                until,
                terminate,
                ..
            } => {
                return Some(Work::Lock {
                    login: login.clone(),
                    until: *until,
                    terminate: *terminate,
                });
            }
            Origin::Unlock {
                lock_id,
                login,
                ended_by,
            } => {
                return Some(Work::Unlock {
                    lock_id: *lock_id,
                    login: login.clone(),
                    ended_by: ended_by.clone(),
                });
            }
            Origin::Drain {
                database,
                until,
                spare,
                lock_accounts,
                ..
            } => {
                return Some(Work::Drain {
                    database: database.clone(),
                    until: *until,
                    spare: spare.clone(),
                    lock_accounts: *lock_accounts,
                });
            }
            Origin::Undrain {
                drain_id,
                database,
                ended_by,
            } => {
                return Some(Work::Undrain {
                    drain_id: *drain_id,
                    database: database.clone(),
                    ended_by: ended_by.clone(),
                });
            }
            _ => {}
        }
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
    /// End the sessions the selection selects, in the plan's mode.
    Select(Box<Selection>),
    /// Sweep for sessions of dropped logins, and of expired logins matching the pattern.
    Sweep {
        /// `LIKE` pattern of the logins checked for expiry.
        pattern: String,
    },
    /// Close the login's gate, record the lock, and (with `terminate`) end its sessions.
    Lock {
        /// The login.
        login: String,
        /// When the lock ends by itself.
        until: Option<DateTime<Utc>>,
        /// End its sessions too.
        terminate: bool,
    },
    /// End the lock and, if it was the login's last, restore the gate it found.
    Unlock {
        /// The lock.
        lock_id: Uuid,
        /// Its login.
        login: String,
        /// Who or what ended it.
        ended_by: String,
    },
    /// Close the database's gate, record the drain, and end its sessions but the spared.
    Drain {
        /// The database.
        database: String,
        /// When it re-opens by itself.
        until: Option<DateTime<Utc>>,
        /// The exclusions that spare sessions (boxed: the selector is large).
        spare: Box<Selector>,
        /// Lock the accounts using the database instead of closing a database gate.
        lock_accounts: bool,
    },
    /// End the drain and, if it was the database's last, restore the gate it found.
    Undrain {
        /// The drain.
        drain_id: Uuid,
        /// Its database.
        database: String,
        /// Who or what ended it.
        ended_by: String,
    },
}

/// Overall result of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every target answered, every signalled session is gone.
    Completed,
    /// A target failed, a session could not be terminated, or one is still connected.
    Incomplete,
    /// Called off before it acted (`POST /v1/actions/{id}/cancel`): nothing was ended.
    Cancelled,
    /// Its window did not open within its `max_wait`: nothing was ended.
    Expired,
}

/// What happened on one target.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// One line per session considered: what was decided and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<SessionDecision>,
}

/// What was decided about one session, in the words reports use: `terminated`,
/// `cancelled`, `would_terminate`, `would_cancel`, `failed`, `remaining`, or a skip reason
/// (`excluded` with its rule, `protected`, `superuser`, `own_login`, `rolling_back`,
/// `not_before_cutoff`, `already_gone`, `system_backend`, `unknown_<field>`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionDecision {
    /// The session's id on its target.
    pub pid: i64,
    /// Its login.
    pub login: Option<String>,
    /// What was decided.
    pub decision: String,
    /// The selector rule that excluded it, for `excluded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// One decision per session of `outcome`, in the words of [`SessionDecision`]: a session
/// cancelled and then terminated is `terminated`; one signalled but still there when
/// verification gave up is `remaining`.
pub fn decisions(outcome: &TerminateOutcome, dry_run: bool, mode: Mode) -> Vec<SessionDecision> {
    let line = |s: &Session, decision: &str, rule: Option<String>| SessionDecision {
        pid: s.pid,
        login: s.login.clone(),
        decision: decision.to_owned(),
        rule,
    };
    let mut out = Vec::new();
    let listed = |list: &[Session], s: &Session| list.iter().any(|o| same_session(o, s));
    if dry_run {
        let word = match mode {
            Mode::Cancel => "would_cancel",
            _ => "would_terminate",
        };
        out.extend(outcome.matched.iter().map(|s| line(s, word, None)));
    }
    for s in &outcome.terminated {
        let word = if listed(&outcome.remaining, s) {
            "remaining"
        } else {
            "terminated"
        };
        out.push(line(s, word, None));
    }
    for s in &outcome.cancelled {
        if !listed(&outcome.terminated, s) {
            let word = if listed(&outcome.remaining, s) {
                "remaining"
            } else {
                "cancelled"
            };
            out.push(line(s, word, None));
        }
    }
    for f in &outcome.failed {
        out.push(line(&f.session, "failed", None));
    }
    for k in &outcome.skipped {
        // Cancelled, then gone before the grace's terminate: it was this action's cancel.
        if listed(&outcome.cancelled, &k.session) {
            continue;
        }
        let rule = match &k.reason {
            SkipReason::Excluded(rule) => Some(rule.clone()),
            _ => None,
        };
        out.push(line(&k.session, &k.reason.word(), rule));
    }
    out
}

impl TargetReport {
    /// Whether the target answered and every signalled session is gone.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.outcome.failed.is_empty() && self.outcome.remaining.is_empty()
    }
}

/// The finished result of an action, as returned by `?wait=true`, revocations and the CLI.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// How sessions were ended (`mode`, `grace`), when not at once.
    #[serde(flatten)]
    pub ending: Ending,
    /// Completed or incomplete.
    pub status: Status,
    /// Per target.
    pub targets: Vec<TargetReport>,
}

/// The report of an action from its plan and its finished steps.
pub fn report(plan: &Plan, mut targets: Vec<TargetReport>) -> ActionReport {
    for t in &mut targets {
        t.decisions = decisions(&t.outcome, plan.dry_run, plan.ending.mode);
    }
    let status = if plan.schedule.as_ref().is_some_and(|s| s.expired) {
        Status::Expired
    } else if targets.iter().all(TargetReport::ok) {
        Status::Completed
    } else {
        Status::Incomplete
    };
    ActionReport {
        action_id: plan.action_id,
        origin: plan.origin.clone(),
        scope: plan.scope,
        dry_run: plan.dry_run,
        ending: plan.ending,
        status,
        targets,
    }
}
