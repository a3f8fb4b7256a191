//! Login locks: the request (`POST /v1/locks`, `sever lock`) and its two plans, the lock and
//! its scheduled expiry; and the plan that lifts a lock early.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ResolveError, TargetSelection, check_login_on, check_reason};
use crate::action::{Origin, Plan, Step};
use crate::config::{Config, ScheduleRequest};
use crate::terminate::Scope;

/// An operator's request to keep a login out of some targets for a while.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LockRequest {
    /// The login kept out.
    pub login: String,
    /// Target ids, or `"all"` (every target with `locks = true`).
    pub targets: TargetSelection,
    /// Why; required, recorded in the audit trail.
    pub reason: String,
    /// How long (`30m`); required unless `permanent`.
    #[serde(default, rename = "for", with = "humantime_serde::option")]
    #[schema(value_type = Option<String>)]
    pub duration: Option<Duration>,
    /// Keep it until lifted: must be said explicitly, so a forgotten `for` never locks a
    /// login for good.
    #[serde(default)]
    pub permanent: bool,
    /// Also end the login's sessions (the default); `false` only locks.
    #[serde(default = "yes")]
    pub terminate: bool,
    /// Announce this long before acting (e.g. `15m`).
    #[serde(default, with = "humantime_serde::option")]
    #[schema(value_type = Option<String>)]
    pub notify_before: Option<Duration>,
    /// Act at or after this time.
    #[serde(default)]
    pub not_before: Option<DateTime<Utc>>,
    /// Act when this `[[windows]]` window is open.
    #[serde(default)]
    pub window: Option<String>,
    /// How long to wait for `window` (default 7d).
    #[serde(default, with = "humantime_serde::option")]
    #[schema(value_type = Option<String>)]
    pub max_wait: Option<Duration>,
    /// Act only if the announcement was delivered by then.
    #[serde(default)]
    pub require_announcement: bool,
}

impl LockRequest {
    /// When it acts and is announced, as asked.
    pub fn schedule(&self) -> ScheduleRequest {
        ScheduleRequest {
            notify_before: self.notify_before,
            not_before: self.not_before,
            window: self.window.clone(),
            max_wait: self.max_wait,
            require_announcement: self.require_announcement,
        }
    }
}

fn yes() -> bool {
    true
}

/// A lock's plan and, unless it is permanent, the plan of its expiry (due at `until`).
#[derive(Debug, Clone)]
pub struct LockPlans {
    /// Locks the login on each target.
    pub lock: Plan,
    /// Ends the lock at its expiry; `None` for a permanent lock.
    pub expiry: Option<(Plan, DateTime<Utc>)>,
}

/// Plans a lock, refusing before anything is connected: no reason, no `for` (nor
/// `permanent`), a target without `locks = true`, a protected login, sever's own login.
pub fn lock(
    config: &Config,
    request: &LockRequest,
    now: DateTime<Utc>,
) -> Result<LockPlans, ResolveError> {
    let invalid = |why: String| ResolveError::Invalid(why);
    if request.reason.trim().is_empty() {
        return Err(invalid("reason is required".into()));
    }
    check_reason(&request.reason)?;
    let span = super::schedule::span(
        config,
        &request.schedule(),
        (request.duration, request.permanent),
        ("a lock", "30m"),
        now,
    )?;
    let (schedule, until, expired) = (span.schedule, span.until, span.expired);
    let targets: Vec<String> = match &request.targets {
        TargetSelection::Keyword(word) if word == "all" => config
            .targets
            .iter()
            .filter(|(_, t)| t.locks)
            .map(|(id, _)| id.clone())
            .collect(),
        TargetSelection::Keyword(other) => {
            return Err(invalid(format!(
                "targets must be a list of target ids or \"all\", not {other:?}"
            )));
        }
        TargetSelection::Named(names) => {
            let mut names = names.clone();
            names.sort();
            names.dedup();
            names
        }
    };
    if targets.is_empty() {
        return Err(invalid("no target with locks = true chosen".into()));
    }
    let mut steps = Vec::new();
    for target in targets {
        check_login_on(config, &target, &request.login)?;
        let t = &config.targets[&target];
        if !t.locks {
            return Err(invalid(format!(
                "target {target:?} does not have locks = true: locking needs grants that \
                 allow more than locking, so it is off unless the target enables it"
            )));
        }
        let protected = config.protected_on(&target);
        if protected.contains(&request.login) {
            return Err(ResolveError::ProtectedLogin {
                login: request.login.clone(),
                target,
            });
        }
        if own_logins(config, &target).contains(&request.login) {
            return Err(invalid(format!(
                "{:?} is sever's own login on target {target:?}: it cannot be locked",
                request.login
            )));
        }
        steps.push(Step {
            target,
            logins: vec![request.login.clone()],
            protected,
        });
    }
    let lock = Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Lock {
            login: request.login.clone(),
            until,
            terminate: request.terminate,
            expiry: None,
        },
        scope: Some(Scope::All),
        dry_run: false,
        reason: Some(request.reason.clone()),
        cutoff_defaulted: false,
        ending: Default::default(),
        selection: None,
        schedule,
        steps: steps.clone(),
    };
    let mut lock = lock;
    let expiry = until.filter(|_| !expired).map(|until| {
        let plan = unlock_plan(
            lock.action_id,
            &request.login,
            steps,
            "expiry",
            "lock expired",
        );
        (plan, until)
    });
    if let (Origin::Lock { expiry: id, .. }, Some((plan, _))) = (&mut lock.origin, &expiry) {
        *id = Some(plan.action_id);
    }
    Ok(LockPlans { lock, expiry })
}

/// The plan that ends lock `lock_id` of `login` on the targets of `steps`.
pub fn unlock_plan(
    lock_id: Uuid,
    login: &str,
    steps: Vec<Step>,
    ended_by: &str,
    reason: &str,
) -> Plan {
    Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Unlock {
            lock_id,
            login: login.to_owned(),
            ended_by: ended_by.to_owned(),
        },
        scope: Some(Scope::All),
        dry_run: false,
        reason: Some(reason.to_owned()),
        cutoff_defaulted: false,
        ending: Default::default(),
        selection: None,
        schedule: None,
        steps,
    }
}

/// The user names in `target`'s URLs (its `url` and `lock_url`) and in the store's URL,
/// where they are URLs: the logins sever itself uses (a PostgreSQL store may live on the
/// target's server).
fn own_logins(config: &Config, target: &str) -> Vec<String> {
    let t = &config.targets[target];
    [Some(&t.url), t.lock_url.as_ref(), Some(&config.store.url)]
        .into_iter()
        .flatten()
        .filter_map(|source| source.load("url").ok())
        .filter_map(|url| url::Url::parse(url.expose_secret()).ok())
        .map(|url| {
            percent_encoding::percent_decode_str(url.username())
                .decode_utf8_lossy()
                .into_owned()
        })
        .filter(|user| !user.is_empty())
        .collect()
}
