//! From what was asked (a rotation event, an operator's revocation) to a [`Plan`]: which
//! logins on which targets, which of their sessions, and what stays protected.
//!
//! A credential reaches only the logins mapped to it in the config; nothing in a request can
//! widen that.
//!
//! Plans are functions of the config, the request and the facts read from the source
//! (`aws.rs` and `vault/` hold the Secrets Manager and Vault clients). May call `action` (the
//! plan it builds), `terminate` (scopes, target types) and `config`; never the queue, the
//! runner or a door.

pub mod aws;
pub mod cutoff;
pub mod drains;
pub mod locks;
mod revocation;
pub mod schedule;
pub mod sweep;
pub mod vault;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Config;
use crate::config::names::{self, NameError, NameKind};
use crate::select::{Ending, Selector};
use crate::terminate::{Scope, listing};

use crate::action::{EventKind, Origin, Plan, Step};

pub use revocation::{RevocationRequest, revocation};

/// Longest accepted `reason`.
pub const MAX_REASON: usize = 1024;

/// Requests that cannot be turned into a plan.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    /// No credential with this id is configured.
    #[error("unknown credential {0:?}")]
    UnknownCredential(String),
    /// No target with this id is configured.
    #[error("unknown target {0:?}")]
    UnknownTarget(String),
    /// The login is protected on a chosen target.
    #[error("login {login:?} is protected on target {target:?}")]
    ProtectedLogin {
        /// The login.
        login: String,
        /// The target.
        target: String,
    },
    /// A field is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A login, database or application name that a target could not hold.
    #[error(transparent)]
    Name(#[from] NameError),
}

/// The generic rotation event any rotation tool can send to `POST /v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
// Unknown fields are refused: a misspelt `rotated_at` would otherwise silently move the cutoff.
#[serde(deny_unknown_fields)]
pub struct RotationEvent {
    /// Configured credential id.
    pub credential: String,
    /// Rotated or revoked.
    pub kind: EventKind,
    /// When the secret changed; defaults to the moment the event was verified.
    #[serde(default)]
    pub rotated_at: Option<DateTime<Utc>>,
    /// Free text for the audit trail.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Which targets an operator's revocation covers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum TargetSelection {
    /// These targets.
    Named(Vec<String>),
    /// The word `"all"`: every configured target.
    Keyword(String),
}

fn check_reason(reason: &str) -> Result<(), ResolveError> {
    if reason.chars().count() > MAX_REASON {
        return Err(ResolveError::Invalid(format!(
            "reason is longer than {MAX_REASON} characters"
        )));
    }
    Ok(())
}

/// Plans a rotation event verified at `verified_at`.
///
/// A `rotated_at` slightly ahead of sever's clock (within `tolerance`) is clock skew and is
/// clamped to `verified_at`; one further ahead is refused rather than trusted, because a
/// cutoff in the future would also end sessions opened with the new secret.
pub fn event(
    config: &Config,
    event: &RotationEvent,
    verified_at: DateTime<Utc>,
    tolerance: Duration,
) -> Result<Plan, ResolveError> {
    let credential = config
        .credentials
        .get(&event.credential)
        .ok_or_else(|| ResolveError::UnknownCredential(event.credential.clone()))?;
    if let Some(reason) = &event.reason {
        check_reason(reason)?;
    }
    let cutoff = cutoff::cutoff(event.rotated_at, None, verified_at, tolerance)
        .map_err(|e| ResolveError::Invalid(format!("rotated_at {e}")))?;
    let scope = match event.kind {
        EventKind::Revoked => Some(Scope::All),
        EventKind::Rotated => cutoff::scope(credential.policy, cutoff),
    };
    if credential.logins.is_empty() {
        return Err(ResolveError::Invalid(format!(
            "credential {:?} takes its logins from its secret; send its events to /v1/events/aws or /v1/events/vault",
            event.credential
        )));
    }
    let mappings = credential
        .logins
        .iter()
        .map(|m| (m.target.clone(), m.login.clone()));
    Ok(Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Event {
            credential: event.credential.clone(),
            kind: event.kind,
            policy: credential.policy,
        },
        scope,
        dry_run: false,
        reason: event.reason.clone(),
        cutoff_defaulted: event.rotated_at.is_none(),
        // A revocation ends every session at once, whatever the credential's mode.
        ending: match event.kind {
            EventKind::Revoked => Ending::TERMINATE,
            EventKind::Rotated => credential.ending(),
        },
        selection: None,
        // A revocation never waits; a rotation waits only if its credential says so.
        schedule: match event.kind {
            EventKind::Revoked => None,
            EventKind::Rotated => schedule::schedule(config, &credential.schedule(), verified_at)?,
        },
        steps: steps_for(config, mappings)?,
    })
}

/// Refuses a login the engine of `target` could not hold: it would fail there on every
/// attempt (see [`names`]).
fn check_login_on(config: &Config, target: &str, login: &str) -> Result<(), ResolveError> {
    let engine = config
        .targets
        .get(target)
        .ok_or_else(|| ResolveError::UnknownTarget(target.to_owned()))?
        .engine;
    Ok(names::check_on(NameKind::Login, login, target, engine)?)
}

/// One step per target, each with its logins (deduplicated, in order) and protection; a
/// login its target could not hold refuses the whole plan.
fn steps_for(
    config: &Config,
    mappings: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Step>, ResolveError> {
    let mut by_target: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (target, login) in mappings {
        check_login_on(config, &target, &login)?;
        let logins = by_target.entry(target).or_default();
        if !logins.contains(&login) {
            logins.push(login);
        }
    }
    Ok(by_target
        .into_iter()
        .map(|(target, logins)| Step {
            protected: config.protected_on(&target),
            target,
            logins,
        })
        .collect())
}

/// Checks a selector against the engine of `target`, or of every target when none is
/// chosen: it must not contradict itself, every name must be one the engine could hold (one
/// it could not would only ever match nothing, or make the engine fail), and every field
/// must be one the engine can evaluate (never silently ignored).
pub fn selector(
    config: &Config,
    target: Option<&str>,
    selector: &Selector,
) -> Result<(), ResolveError> {
    let chosen: Vec<(&String, &crate::config::TargetConfig)> = match target {
        Some(id) => {
            let (id, t) = config
                .targets
                .get_key_value(id)
                .ok_or_else(|| ResolveError::UnknownTarget(id.to_owned()))?;
            vec![(id, t)]
        }
        None => config.targets.iter().collect(),
    };
    selector
        .validate()
        .map_err(|e| ResolveError::Invalid(e.to_string()))?;
    let patterns = |p: &[crate::select::Pattern]| -> Vec<String> {
        p.iter().map(|p| p.as_str().to_owned()).collect()
    };
    let fields = [
        (NameKind::Login, selector.logins.clone()),
        (NameKind::Login, selector.exclude_logins.clone()),
        (NameKind::Database, selector.databases.clone()),
        (NameKind::Database, selector.exclude_databases.clone()),
        (
            NameKind::ApplicationName,
            patterns(&selector.application_names),
        ),
        (
            NameKind::ApplicationName,
            patterns(&selector.exclude_application_names),
        ),
    ];
    for (kind, values) in &fields {
        for value in values {
            names::check(*kind, value)?;
            for (id, t) in &chosen {
                names::check_on(*kind, value, id, t.engine)?;
            }
        }
    }
    for (id, t) in &chosen {
        if let Some(why) = listing::unsupported_sessions(t.engine, &selector.sessions) {
            return Err(ResolveError::Invalid(format!(
                "sessions: {why} (target {id:?})"
            )));
        }
    }
    for field in selector.fields() {
        for (id, t) in &chosen {
            if let Some(why) = listing::unsupported(t.engine, field) {
                return Err(ResolveError::Invalid(format!(
                    "{field} cannot be evaluated on target {id:?}: {why}"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(policy: &str) -> Config {
        Config::parse(&format!(
            r#"
            protected_logins = ["postgres"]
            [targets.a]
            engine = "postgres"
            url = "postgres://sever@h/db"
            [targets.b]
            engine = "postgres"
            url = "postgres://sever@h2/db"
            protected_logins = ["ops"]
            [credentials.app]
            policy = "{policy}"
            logins = [{{ target = "a", login = "app" }}, {{ target = "b", login = "app" }}, {{ target = "a", login = "app2" }}]
            "#
        ))
        .unwrap()
    }

    fn rotated(at: Option<DateTime<Utc>>) -> RotationEvent {
        RotationEvent {
            credential: "app".into(),
            kind: EventKind::Rotated,
            rotated_at: at,
            reason: None,
        }
    }

    const TOL: Duration = Duration::from_secs(300);

    #[test]
    fn a_rotation_reaches_exactly_the_mapped_logins() {
        let now = Utc::now();
        let plan = event(&config("terminate_before_cutoff"), &rotated(None), now, TOL).unwrap();
        assert_eq!(plan.scope, Some(Scope::Before(now)));
        assert_eq!(plan.steps.len(), 2);
        assert_eq!(plan.steps[0].target, "a");
        assert_eq!(plan.steps[0].logins, ["app", "app2"]);
        assert!(plan.steps[1].protected.contains("ops"));
        assert!(plan.steps[1].protected.contains("postgres"));
    }

    #[test]
    fn policy_and_kind_choose_the_scope() {
        let now = Utc::now();
        let earlier = now - chrono::Duration::minutes(1);
        let p = event(
            &config("terminate_before_cutoff"),
            &rotated(Some(earlier)),
            now,
            TOL,
        )
        .unwrap();
        assert_eq!(p.scope, Some(Scope::Before(earlier)));
        let p = event(&config("terminate_all"), &rotated(None), now, TOL).unwrap();
        assert_eq!(p.scope, Some(Scope::All));
        let p = event(&config("none"), &rotated(None), now, TOL).unwrap();
        assert_eq!(p.scope, None);
        let mut revoked = rotated(None);
        revoked.kind = EventKind::Revoked;
        let p = event(&config("none"), &revoked, now, TOL).unwrap();
        assert_eq!(p.scope, Some(Scope::All));
    }

    #[test]
    fn future_rotated_at_is_clamped_within_tolerance_and_refused_beyond() {
        let now = Utc::now();
        let skewed = now + chrono::Duration::seconds(3);
        let p = event(
            &config("terminate_before_cutoff"),
            &rotated(Some(skewed)),
            now,
            TOL,
        )
        .unwrap();
        assert_eq!(p.scope, Some(Scope::Before(now)));
        let far = now + chrono::Duration::hours(1);
        let e = event(
            &config("terminate_before_cutoff"),
            &rotated(Some(far)),
            now,
            TOL,
        )
        .unwrap_err();
        assert!(matches!(e, ResolveError::Invalid(_)));
    }

    #[test]
    fn unknown_credential_is_refused() {
        let mut e = rotated(None);
        e.credential = "nope".into();
        assert_eq!(
            event(&config("none"), &e, Utc::now(), TOL).unwrap_err(),
            ResolveError::UnknownCredential("nope".into())
        );
    }

    fn revoke(login: &str, targets: TargetSelection) -> RevocationRequest {
        RevocationRequest::of_login(login, targets, "incident 42")
    }

    #[test]
    fn revocation_checks_targets_protection_and_reason() {
        let c = config("none");
        let all = revocation(&c, &revoke("x", TargetSelection::Keyword("all".into()))).unwrap();
        assert_eq!(all.steps.len(), 2);
        assert_eq!(all.scope, Some(Scope::All));
        assert_eq!(
            revocation(&c, &revoke("x", TargetSelection::Named(vec!["zz".into()]))).unwrap_err(),
            ResolveError::UnknownTarget("zz".into())
        );
        assert!(matches!(
            revocation(&c, &revoke("ops", TargetSelection::Named(vec!["b".into()]))).unwrap_err(),
            ResolveError::ProtectedLogin { .. }
        ));
        assert!(revocation(&c, &revoke("ops", TargetSelection::Named(vec!["a".into()]))).is_ok());
        let mut no_reason = revoke("x", TargetSelection::Keyword("all".into()));
        no_reason.reason = "  ".into();
        assert!(revocation(&c, &no_reason).is_err());
        assert!(revocation(&c, &revoke("x", TargetSelection::Keyword("some".into()))).is_err());
        assert!(revocation(&c, &revoke("x", TargetSelection::Named(vec![]))).is_err());
    }

    #[test]
    fn names_a_target_cannot_hold_are_refused_before_planning() {
        let c = Config::parse(
            r#"
            [targets.pg]
            engine = "postgres"
            url = "postgres://sever@h/db"
            [targets.my]
            engine = "mysql"
            url = "mysql://sever@h/db"
            "#,
        )
        .unwrap();
        let named = |t: &str| TargetSelection::Named(vec![t.into()]);
        for bad in ["a\0b", "a\u{1}", "a\u{7f}", "a\u{9b}", ""] {
            let e = revocation(&c, &revoke(bad, named("pg"))).unwrap_err();
            assert!(matches!(e, ResolveError::Name(_)), "{bad:?}: {e}");
        }
        assert!(matches!(
            revocation(&c, &revoke(&"a".repeat(64), named("pg"))).unwrap_err(),
            ResolveError::Name(_)
        ));
        // A 4-byte character: PostgreSQL holds it, MySQL's utf8mb3 names do not.
        assert!(revocation(&c, &revoke("app😀", named("pg"))).is_ok());
        assert!(matches!(
            revocation(&c, &revoke("app😀", named("my"))).unwrap_err(),
            ResolveError::Name(_)
        ));
        assert!(revocation(&c, &revoke("app😀", TargetSelection::Keyword("all".into()))).is_err());
        // A selector is checked against the chosen target, or every target.
        let filter = |login: &str| Selector {
            exclude_logins: vec![login.into()],
            ..Default::default()
        };
        assert!(selector(&c, Some("pg"), &filter("app😀")).is_ok());
        assert!(selector(&c, Some("my"), &filter("app😀")).is_err());
        assert!(selector(&c, None, &filter("app😀")).is_err());
        assert!(selector(&c, None, &filter("a\0")).is_err());
        assert_eq!(
            selector(&c, Some("zz"), &filter("a")).unwrap_err(),
            ResolveError::UnknownTarget("zz".into())
        );
        // A field the engine cannot evaluate is refused by name, with the target.
        let started = Selector {
            started_before: Some(Utc::now()),
            ..Default::default()
        };
        assert!(selector(&c, Some("pg"), &started).is_ok());
        let e = selector(&c, Some("my"), &started).unwrap_err().to_string();
        assert!(e.contains("started_before") && e.contains("\"my\""), "{e}");
    }
}
