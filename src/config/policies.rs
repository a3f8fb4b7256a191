//! `[[policies]]`: standing orders that end sessions by rule: which targets, which sessions
//! (the session selector), when (a threshold), which victims and how many per run, how they
//! end, and whether the policy only observes. The guard rails that bound an enforcing
//! policy's reach are checked here, at load, so a policy that could end too much never runs.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, Engine, check_id, invalid};
use crate::select::{Ending, MAX_GRACE, Mode, Selector, Victims, When};

/// Policy names a synthesised sweep policy takes (`sweep:<target>`); configured policies
/// may not.
pub const SWEEP_PREFIX: &str = "sweep:";

/// One policy.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Its name: in the actor of its actions (`policy:<name>`), its metrics and its URL.
    pub name: String,
    /// Target ids, or `"all"`.
    pub targets: PolicyTargets,
    /// Which sessions, in the selector's words.
    #[serde(default)]
    pub selector: Selector,
    /// The selector names no login on purpose: every login's sessions are candidates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_logins: bool,
    /// What must hold on a target before anything happens there.
    #[serde(default)]
    pub when: When,
    /// Which selected sessions one run ends, and in which order.
    #[serde(default)]
    pub victims: Victims,
    /// The most sessions one run ends, over all its targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_run: Option<usize>,
    /// How they end; `report` ends nothing.
    #[serde(default)]
    pub mode: PolicyMode,
    /// How long `graceful` lets statements and transactions finish.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub grace: Option<Duration>,
    /// `observe` (the default) reports what it would end; `enforce` ends it.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// How often it is evaluated.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub interval: Duration,
    /// Names of `[[windows]]`: an enforcing policy acts only inside one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<String>,
    /// An enforcing firing is announced this long ahead and acts only then, selecting its
    /// sessions again at that time.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub notify_before: Option<Duration>,
    /// Runs in a row that end sessions before the policy pauses itself.
    #[serde(default = "default_pause_after")]
    pub pause_after: u32,
    /// Why, as its actions record it; `policy <name>` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn default_pause_after() -> u32 {
    10
}

/// Target ids, or the word `"all"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PolicyTargets {
    /// These targets.
    Named(Vec<String>),
    /// `"all"`: every configured target.
    Keyword(String),
}

/// How a policy's victims end: the selector's modes, or `report` (nothing ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// End the session at once.
    #[default]
    Terminate,
    /// End its running statement only.
    Cancel,
    /// Let it finish within the grace, then cancel, then terminate.
    Graceful,
    /// End nothing, even when enforcing: every run only reports.
    Report,
}

/// Whether a policy ends what it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Report what would be ended; end nothing.
    #[default]
    Observe,
    /// End it.
    Enforce,
}

impl PolicyConfig {
    /// How its victims end; `None` for `report`.
    pub fn ending(&self) -> Option<Ending> {
        let mode = match self.mode {
            PolicyMode::Terminate => Mode::Terminate,
            PolicyMode::Cancel => Mode::Cancel,
            PolicyMode::Graceful => Mode::Graceful,
            PolicyMode::Report => return None,
        };
        Some(Ending {
            mode,
            grace: self.grace,
        })
    }

    /// Whether a run may end sessions: enforcing, and not `report`.
    pub fn ends_sessions(&self) -> bool {
        self.enforcement == Enforcement::Enforce && self.mode != PolicyMode::Report
    }

    /// The targets it covers, in id order.
    pub fn target_ids(&self, config: &Config) -> Vec<String> {
        match &self.targets {
            PolicyTargets::Keyword(_) => config.targets.keys().cloned().collect(),
            PolicyTargets::Named(names) => {
                let unique: BTreeSet<&String> = names.iter().collect();
                unique.into_iter().cloned().collect()
            }
        }
    }

    /// The reason its actions record.
    pub fn reason(&self) -> String {
        self.reason
            .clone()
            .unwrap_or_else(|| format!("policy {}", self.name))
    }
}

/// Checks every policy: names, targets, selector, threshold, mode, windows, and for an
/// enforcing one the guard rails (named logins or a narrowed `all_logins`, `max_per_run`).
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    for (i, policy) in config.policies.iter().enumerate() {
        let path = |key: &str| format!("policies[{i}].{key}");
        check_id(&policy.name).map_err(|why| invalid(path("name"), why))?;
        if policy.name.contains('/') {
            return Err(invalid(
                path("name"),
                "a policy's name is part of its URL: no '/'",
            ));
        }
        if policy.name.starts_with(SWEEP_PREFIX) {
            return Err(invalid(
                path("name"),
                "names beginning with sweep: are the sweeps' own ([targets.<id>.sweep])",
            ));
        }
        if !names.insert(policy.name.as_str()) {
            return Err(invalid(path("name"), "two policies have this name"));
        }
        let path = |key: &str| format!("policies[{}].{key}", policy.name);
        check_targets(config, policy, &path("targets"))?;
        policy
            .selector
            .validate()
            .map_err(|e| invalid(path("selector"), &e.to_string()))?;
        if !policy.selector.sessions.is_empty() {
            return Err(invalid(
                path("selector.sessions"),
                "a policy cannot name single sessions: a pid is reused and means nothing to a \
                 standing policy (select by login, database, application name, state or \
                 duration)",
            ));
        }
        check_reach(policy, &path)?;
        if let Some(ending) = policy.ending() {
            ending
                .validate(MAX_GRACE)
                .map_err(|e| invalid(path(e.field), &e.problem))?;
        } else if policy.grace.is_some() {
            return Err(invalid(path("grace"), "is only for mode graceful"));
        }
        match policy.when {
            When::MatchingAtLeast(0) => {
                return Err(invalid(path("when"), "matching_at_least must be positive"));
            }
            When::LoginSessionsAbove(_) if policy.all_logins => {
                return Err(invalid(
                    path("when"),
                    "login_sessions_above counts the named logins' sessions: name them, or \
                     use connections_above_percent_of_max",
                ));
            }
            When::ConnectionsAbovePercentOfMax(p) if p == 0 || p > 100 => {
                return Err(invalid(
                    path("when"),
                    "connections_above_percent_of_max is a percentage from 1 to 100",
                ));
            }
            _ => {}
        }
        for target in policy.target_ids(config) {
            let protected = config.protected_on(&target);
            if let Some(login) = policy
                .selector
                .logins
                .iter()
                .find(|l| protected.contains(*l))
            {
                return Err(invalid(
                    path("selector"),
                    &format!("login {login:?} is protected on target {target:?}"),
                ));
            }
            let engine = config.targets[&target].engine;
            if engine != Engine::Sqlserver {
                continue;
            }
            if policy.when.needs_limit() {
                return Err(invalid(
                    path("when"),
                    &format!(
                        "target {target:?} is SQL Server, where @@MAX_CONNECTIONS is 32,767 \
                         unless 'user connections' is set, so a share of it would never be \
                         reached; use matching_at_least"
                    ),
                ));
            }
            if policy.mode == PolicyMode::Cancel {
                return Err(invalid(
                    path("mode"),
                    &format!(
                        "target {target:?} is SQL Server, which cannot cancel another \
                         session's statement without ending it"
                    ),
                ));
            }
        }
        if policy
            .notify_before
            .is_some_and(|d| d.is_zero() || d >= policy.interval)
        {
            return Err(invalid(
                path("notify_before"),
                "is more than zero and shorter than the interval: a firing acts before the \
                 next evaluation",
            ));
        }
        if policy.interval < Duration::from_secs(1) {
            return Err(invalid(path("interval"), "must be at least 1s"));
        }
        if policy.pause_after == 0 {
            return Err(invalid(path("pause_after"), "must be positive"));
        }
        if policy
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > 512)
        {
            return Err(invalid(path("reason"), "is longer than 512 characters"));
        }
        for window in &policy.windows {
            if config.window(window).is_none() {
                return Err(invalid(
                    path("windows"),
                    &format!("no [[windows]] is named {window:?}"),
                ));
            }
        }
    }
    Ok(())
}

fn check_targets(config: &Config, policy: &PolicyConfig, path: &str) -> Result<(), ConfigError> {
    match &policy.targets {
        PolicyTargets::Keyword(word) if word == "all" => Ok(()),
        PolicyTargets::Keyword(other) => Err(invalid(
            path.to_owned(),
            &format!("a list of target ids or \"all\", not {other:?}"),
        )),
        PolicyTargets::Named(names) if names.is_empty() => {
            Err(invalid(path.to_owned(), "names no target"))
        }
        PolicyTargets::Named(names) => {
            match names.iter().find(|n| !config.targets.contains_key(*n)) {
                Some(unknown) => Err(invalid(
                    path.to_owned(),
                    &format!("no target is named {unknown:?}"),
                )),
                None => Ok(()),
            }
        }
    }
}

/// The guard rails on what a policy may reach: logins named, or every login with a field
/// that really narrows; and for one that ends sessions, a `max_per_run`.
fn check_reach(policy: &PolicyConfig, path: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let selector = &policy.selector;
    match (policy.all_logins, selector.logins.is_empty()) {
        (true, false) => {
            return Err(invalid(
                path("all_logins"),
                "all_logins and selector.logins exclude each other",
            ));
        }
        (false, true) => {
            return Err(invalid(
                path("selector"),
                "a policy names its logins (selector.logins), or sets all_logins = true with \
                 a field that narrows the selection",
            ));
        }
        _ => {}
    }
    if !policy.ends_sessions() {
        return Ok(());
    }
    if policy.all_logins && selector.narrowing(chrono::Utc::now()).is_empty() {
        return Err(invalid(
            path("selector"),
            "an enforcing all_logins policy needs a field that narrows the selection (a \
             database, an application name, a client block, some states, a duration); \
             exclusions and values matching everything do not count",
        ));
    }
    match policy.max_per_run {
        None => Err(invalid(
            path("max_per_run"),
            "an enforcing policy sets max_per_run: the most sessions one run may end",
        )),
        Some(0) => Err(invalid(path("max_per_run"), "must be positive")),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests;
