//! An operator's revocation: the request (`POST /v1/revocations`, `sever revoke`) and its
//! plan, with the guard rails that bound what one revocation can reach.
//!
//! Two paths. A revocation that names logins and at most a cutoff, in mode `terminate`, is
//! the incident path: it runs as a rotation does (set-based, and it also finds the sessions
//! of a role dropped since sever learned it). Any other selector field, `all_logins`, or
//! another mode takes the selector path ([`crate::terminate::selected`]), which reports
//! every session's decision.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{ResolveError, TargetSelection, check_login_on, check_reason, selector};
use crate::action::{Origin, Plan, ScheduleRequest, Selection, Step};
use crate::config::{Config, Engine};
use crate::select::{Ending, MAX_GRACE, Mode, Selector};
use crate::terminate::Scope;

/// An operator's request to end sessions now: the session selector's fields beside
/// `targets`, `reason`, `dry_run`, `mode` / `grace`, `all_logins` and `expect_count`.
/// Unknown fields are refused (a misspelt `exclude_logins` must not widen a revocation).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "Wire")]
pub struct RevocationRequest {
    /// Target ids, or `"all"`.
    pub targets: TargetSelection,
    /// Which sessions (`login` is accepted for `logins`).
    #[serde(flatten)]
    pub selector: Selector,
    /// Reach every login's sessions; needs another field that really narrows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_logins: bool,
    /// Only sessions that began before this time (the same as `started_before`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<DateTime<Utc>>,
    /// Why; required, recorded in the audit trail.
    pub reason: String,
    /// Report what would be ended and change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// How sessions are ended.
    #[serde(flatten)]
    pub ending: Ending,
    /// How many sessions its dry run found; required with `all_logins`. The revocation is
    /// refused (`409`) if more are selected now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_count: Option<usize>,
    /// When it acts and is announced, if not at once (`notify_before`, `not_before`,
    /// `window`, `max_wait`, `require_announcement`).
    #[serde(flatten)]
    pub schedule: ScheduleRequest,
}

/// The request as sent: its own fields, the rest read as the selector.
#[derive(Deserialize)]
struct Wire {
    targets: TargetSelection,
    #[serde(default)]
    all_logins: bool,
    #[serde(default)]
    before: Option<DateTime<Utc>>,
    reason: String,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    mode: Mode,
    #[serde(default, with = "humantime_serde::option")]
    grace: Option<std::time::Duration>,
    #[serde(default)]
    expect_count: Option<usize>,
    #[serde(default, with = "humantime_serde::option")]
    notify_before: Option<std::time::Duration>,
    #[serde(default)]
    not_before: Option<DateTime<Utc>>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    max_wait: Option<std::time::Duration>,
    #[serde(default)]
    require_announcement: bool,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

impl TryFrom<Wire> for RevocationRequest {
    type Error = String;

    fn try_from(w: Wire) -> Result<Self, String> {
        // The selector refuses fields it does not know, naming them.
        let selector = Selector::deserialize(Value::Object(w.rest)).map_err(|e| e.to_string())?;
        Ok(Self {
            targets: w.targets,
            selector,
            all_logins: w.all_logins,
            before: w.before,
            reason: w.reason,
            dry_run: w.dry_run,
            ending: Ending {
                mode: w.mode,
                grace: w.grace,
            },
            expect_count: w.expect_count,
            schedule: ScheduleRequest {
                notify_before: w.notify_before,
                not_before: w.not_before,
                window: w.window,
                max_wait: w.max_wait,
                require_announcement: w.require_announcement,
            },
        })
    }
}

impl RevocationRequest {
    /// A revocation of one login's sessions (before `before`, if given): the incident path.
    pub fn of_login(login: &str, targets: TargetSelection, reason: &str) -> Self {
        Self {
            targets,
            selector: Selector {
                logins: vec![login.to_owned()],
                ..Selector::default()
            },
            all_logins: false,
            before: None,
            reason: reason.to_owned(),
            dry_run: false,
            ending: Ending::TERMINATE,
            expect_count: None,
            schedule: ScheduleRequest::default(),
        }
    }

    /// Whether it takes the selector path: a field beyond logins and a cutoff, every
    /// login, a mode other than `terminate`, or an `expect_count` (only that path counts
    /// the selection again before it ends anything, so the count must not be ignored).
    pub fn uses_selector(&self) -> bool {
        self.all_logins
            || self.expect_count.is_some()
            || self.ending != Ending::TERMINATE
            || self
                .selector
                .fields()
                .iter()
                .any(|f| !matches!(*f, "logins" | "started_before"))
    }
}

/// Plans an operator's revocation, refusing before anything is connected what the guard
/// rails forbid: no login named (or `all_logins` without a real narrowing, or without its
/// dry run's `expect_count`), a protected login, a field or mode a chosen target's engine
/// cannot carry out.
pub fn revocation(config: &Config, request: &RevocationRequest) -> Result<Plan, ResolveError> {
    let invalid = |why: &str| ResolveError::Invalid(why.to_owned());
    if request.reason.trim().is_empty() {
        return Err(invalid("reason is required"));
    }
    check_reason(&request.reason)?;
    let mut chosen = request.selector.clone();
    match (request.before, chosen.started_before) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid(
                "before and started_before are the same field; give one",
            ));
        }
        (Some(at), _) => chosen.started_before = Some(at),
        _ => {}
    }
    request
        .ending
        .validate(MAX_GRACE)
        .map_err(|e| ResolveError::Invalid(e.to_string()))?;
    let now = Utc::now();
    match (request.all_logins, chosen.logins.is_empty()) {
        (false, true) => {
            return Err(invalid(
                "a revocation names at least one login (logins), or sets all_logins together \
                 with a field that narrows it",
            ));
        }
        (true, false) => {
            return Err(invalid(
                "all_logins and logins exclude each other: name the logins, or reach every \
                 login's sessions",
            ));
        }
        (true, true) => {
            if chosen.narrowing(now).is_empty() {
                return Err(invalid(
                    "all_logins needs a field that narrows the selection (a database, an \
                     application name, a client block smaller than /0, a past start time, \
                     some states, a non-zero duration, single sessions); exclusions, values \
                     matching everything and empty lists do not count",
                ));
            }
            if !request.dry_run && request.expect_count.is_none() {
                return Err(invalid(
                    "an all_logins revocation carries expect_count: the number of sessions \
                     its dry run would end",
                ));
            }
        }
        (false, false) => {}
    }
    let targets = chosen_targets(config, &request.targets)?;
    for target in &targets {
        selector(config, Some(target), &chosen)?;
        if request.ending.mode == Mode::Cancel && config.targets[target].engine == Engine::Sqlserver
        {
            return Err(ResolveError::Invalid(format!(
                "mode cancel: target {target:?} is SQL Server, which cannot cancel another \
                 session's statement without ending it"
            )));
        }
    }
    let mut steps = Vec::new();
    for target in targets {
        let protected = config.protected_on(&target);
        for login in &chosen.logins {
            check_login_on(config, &target, login)?;
            if protected.contains(login) {
                return Err(ResolveError::ProtectedLogin {
                    login: login.clone(),
                    target,
                });
            }
        }
        steps.push(Step {
            target,
            logins: chosen.logins.clone(),
            protected,
        });
    }
    let login = match chosen.logins.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    let selection = request.uses_selector().then(|| Selection {
        selector: chosen.clone(),
        all_logins: request.all_logins,
        at_most: BTreeMap::new(),
        pick: None,
    });
    let schedule = super::schedule::schedule(config, &request.schedule, now)?;
    Ok(Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Revocation { login },
        scope: Some(chosen.started_before.map_or(Scope::All, Scope::Before)),
        dry_run: request.dry_run,
        reason: Some(request.reason.clone()),
        cutoff_defaulted: false,
        ending: request.ending,
        selection,
        schedule,
        steps,
    })
}

/// The target ids a request chose, each once and known.
fn chosen_targets(config: &Config, chosen: &TargetSelection) -> Result<Vec<String>, ResolveError> {
    let targets: Vec<String> = match chosen {
        TargetSelection::Keyword(word) if word == "all" => config.targets.keys().cloned().collect(),
        TargetSelection::Keyword(other) => {
            return Err(ResolveError::Invalid(format!(
                "targets must be a list of target ids or \"all\", not {other:?}"
            )));
        }
        TargetSelection::Named(names) => {
            let unique: BTreeSet<&String> = names.iter().collect();
            unique.into_iter().cloned().collect()
        }
    };
    if targets.is_empty() {
        return Err(ResolveError::Invalid("no targets chosen".into()));
    }
    for target in &targets {
        if !config.targets.contains_key(target) {
            return Err(ResolveError::UnknownTarget(target.clone()));
        }
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"
            protected_logins = ["postgres"]
            [targets.a]
            engine = "postgres"
            url = "postgres://sever@h/db"
            [targets.m]
            engine = "sqlserver"
            url = "mssql://sever@h3/db"
            "#,
        )
        .unwrap()
    }

    fn parse(json: &str) -> Result<RevocationRequest, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    fn plan(json: &str) -> Result<Plan, String> {
        let request = parse(json)?;
        revocation(&config(), &request).map_err(|e| e.to_string())
    }

    #[test]
    fn the_incident_path_stays_and_a_selector_field_takes_the_selector_path() {
        let p = plan(r#"{"login":"app","targets":["a"],"reason":"incident 7"}"#).unwrap();
        assert!(p.selection.is_none());
        assert_eq!(
            p.origin,
            Origin::Revocation {
                login: Some("app".into())
            }
        );
        let p = plan(
            r#"{"logins":["app"],"targets":["a"],"reason":"r","before":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert!(p.selection.is_none());
        assert!(matches!(p.scope, Some(Scope::Before(_))));
        let p = plan(
            r#"{"logins":["app"],"exclude_application_names":["pg_dump"],"targets":["a"],"reason":"r"}"#,
        )
        .unwrap();
        let s = p.selection.unwrap();
        assert_eq!(s.selector.exclude_application_names[0].as_str(), "pg_dump");
        let p =
            plan(r#"{"login":"app","targets":["a"],"reason":"r","mode":"graceful","grace":"30s"}"#)
                .unwrap();
        assert!(p.selection.is_some());
        assert_eq!(p.ending.mode, Mode::Graceful);
        // A count to hold it to is checked on the selector path, never silently dropped.
        let p = plan(r#"{"login":"app","targets":["a"],"reason":"r","expect_count":2}"#).unwrap();
        assert!(p.selection.is_some());
    }

    #[test]
    fn guard_rails_refuse_before_anything_is_connected() {
        let refused = |json: &str, needle: &str| {
            let e = plan(json).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        };
        refused(r#"{"targets":["a"],"reason":"r"}"#, "at least one login");
        refused(
            r#"{"all_logins":true,"targets":["a"],"reason":"r","dry_run":true}"#,
            "narrows",
        );
        for trivial in [
            r#""application_names":["*"]"#,
            r#""client_addrs":["0.0.0.0/0"]"#,
            r#""idle_for":"0s""#,
            r#""states":["active","idle","idle_in_transaction","idle_in_transaction_aborted"]"#,
            r#""started_before":"2999-01-01T00:00:00Z""#,
            r#""exclude_logins":["app"]"#,
        ] {
            refused(
                &format!(
                    r#"{{"all_logins":true,{trivial},"targets":["a"],"reason":"r","dry_run":true}}"#
                ),
                "narrows",
            );
        }
        refused(
            r#"{"all_logins":true,"databases":["orders"],"targets":["a"],"reason":"r"}"#,
            "expect_count",
        );
        assert!(
            plan(r#"{"all_logins":true,"databases":["orders"],"targets":["a"],"reason":"r","expect_count":3}"#)
                .is_ok()
        );
        refused(
            r#"{"all_logins":true,"logins":["x"],"databases":["d"],"targets":["a"],"reason":"r","dry_run":true}"#,
            "exclude each other",
        );
        refused(
            r#"{"login":"postgres","targets":["a"],"reason":"r"}"#,
            "protected",
        );
        refused(
            r#"{"login":"app","targets":["m"],"reason":"r","mode":"cancel"}"#,
            "SQL Server",
        );
        refused(
            r#"{"login":"app","targets":["a"],"reason":"r","mode":"graceful"}"#,
            "grace",
        );
        refused(
            r#"{"login":"app","targets":["a"],"reason":"r","mode":"graceful","grace":"2h"}"#,
            "longer than",
        );
        refused(
            r#"{"login":"app","targets":["a"],"reason":" "}"#,
            "reason is required",
        );
        assert!(
            parse(r#"{"login":"app","targets":["a"],"reason":"r","exclude_login":["x"]}"#)
                .unwrap_err()
                .contains("exclude_login")
        );
    }
}
