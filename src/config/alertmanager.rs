//! `[alertmanager]`: Alertmanager's webhook as a trigger for policies. Its own bearer tokens
//! (Alertmanager can only authenticate with `http_config`), and routes from an alert's
//! labels to the policy it runs, optionally on the target one label names.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigError, SWEEP_PREFIX, invalid};

/// Alertmanager intake settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Hex SHA-256 of each accepted bearer token (never an operator's).
    #[serde(default)]
    pub tokens_sha256: Vec<String>,
    /// Which alerts run which policy; the first route whose matchers all hold wins.
    #[serde(default)]
    pub routes: Vec<AlertRoute>,
    /// How long a firing alert is remembered, so a re-delivery of it runs nothing.
    #[serde(default = "default_remember", with = "humantime_serde")]
    pub remember_for: Duration,
}

impl Default for AlertmanagerConfig {
    fn default() -> Self {
        Self {
            tokens_sha256: Vec::new(),
            routes: Vec::new(),
            remember_for: default_remember(),
        }
    }
}

fn default_remember() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// One route: alerts whose labels equal every matcher run `policy`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRoute {
    /// Label name to exact value, e.g. `{ alertname = "PgConnectionsHigh" }`.
    pub matchers: BTreeMap<String, String>,
    /// The policy it runs, once per firing alert.
    pub policy: String,
    /// The label naming the target to run it on; it must be one of the policy's targets.
    pub target_label: Option<String>,
}

impl AlertRoute {
    /// Whether an alert with `labels` takes this route.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Checks the tokens (hex SHA-256, none an operator's) and the routes (matchers given, the
/// policy configured).
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let am = &config.alertmanager;
    let operators: BTreeSet<String> = config
        .operators
        .iter()
        .map(|o| o.token_sha256.to_ascii_lowercase())
        .collect();
    let mut seen = BTreeSet::new();
    for (i, hash) in am.tokens_sha256.iter().enumerate() {
        let path = format!("alertmanager.tokens_sha256[{i}]");
        let hash = hash.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(
                path,
                "must be 64 hex characters (run `sever operator-token`)",
            ));
        }
        if operators.contains(&hash) {
            return Err(invalid(
                path,
                "is an operator's token: Alertmanager gets a token of its own",
            ));
        }
        if !seen.insert(hash) {
            return Err(invalid(path, "is listed twice"));
        }
    }
    for (i, route) in am.routes.iter().enumerate() {
        let path = |key: &str| format!("alertmanager.routes[{i}].{key}");
        if route.matchers.is_empty() {
            return Err(invalid(
                path("matchers"),
                "a route matches at least one label, e.g. { alertname = \"…\" }",
            ));
        }
        let known = config.policies.iter().any(|p| p.name == route.policy)
            || route
                .policy
                .strip_prefix(SWEEP_PREFIX)
                .and_then(|t| config.targets.get(t))
                .is_some_and(|t| t.sweep.is_some());
        if !known {
            return Err(invalid(
                path("policy"),
                &format!("no policy is named {:?}", route.policy),
            ));
        }
        if route.target_label.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(path("target_label"), "must not be empty"));
        }
    }
    if am.remember_for < Duration::from_secs(60) {
        return Err(invalid(
            "alertmanager.remember_for".into(),
            "must be at least 1m",
        ));
    }
    Ok(())
}
