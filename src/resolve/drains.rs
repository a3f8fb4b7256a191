//! Database drains: the request (`POST /v1/drains`, `sever drain`) and its two plans, the
//! drain and its scheduled re-open; the plan that lifts a drain early; and the guard rails,
//! checked before anything is connected.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ResolveError, check_reason};
use crate::action::{Origin, Plan, Step};
use crate::config::names::{self, NameKind};
use crate::config::{Config, Engine, ScheduleRequest};
use crate::select::{Ending, MAX_GRACE, Mode, Selector};
use crate::terminate::Scope;

/// An operator's request to keep one database clear for a while.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// The target (one; it must have `locks = true`).
    pub target: String,
    /// The database kept clear.
    pub database: String,
    /// Why; required, recorded in the audit trail.
    pub reason: String,
    /// How long (`15m`); required unless `permanent`.
    #[serde(default, rename = "for", with = "humantime_serde::option")]
    #[schema(value_type = Option<String>)]
    pub duration: Option<Duration>,
    /// Keep it until lifted: must be said explicitly.
    #[serde(default)]
    pub permanent: bool,
    /// How the sessions end: `terminate` (the default) or `graceful`.
    #[serde(default)]
    pub mode: Mode,
    /// How long `graceful` waits (e.g. `30s`).
    #[serde(default, with = "humantime_serde::option")]
    #[schema(value_type = Option<String>)]
    pub grace: Option<Duration>,
    /// Sessions spared: `logins` and `application_names` only (they become exclusions).
    #[serde(default)]
    pub except: Selector,
    /// MySQL/MariaDB only (required there): lock the accounts whose sessions use the
    /// database, server-wide, instead of closing a per-database gate the engine lacks.
    #[serde(default)]
    pub lock_accounts: bool,
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

impl DrainRequest {
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

/// A drain's plan and, unless it is permanent, the plan of its re-open (due at `until`).
#[derive(Debug, Clone)]
pub struct DrainPlans {
    /// Drains the database.
    pub drain: Plan,
    /// Re-opens it at its expiry; `None` for a permanent drain.
    pub expiry: Option<(Plan, DateTime<Utc>)>,
}

/// `except` as exclusions: its inclusions become the matching exclusions. A field with no
/// exclusion counterpart is refused, never ignored.
pub fn spare_of(except: &Selector) -> Result<Selector, ResolveError> {
    let convertible = ["logins", "application_names"];
    let refused: Vec<&str> = except
        .fields()
        .into_iter()
        .filter(|f| !convertible.contains(f))
        .collect();
    if !refused.is_empty() {
        return Err(ResolveError::Invalid(format!(
            "except: {} cannot be turned into an exclusion; a drain spares by logins and \
             application_names only",
            refused.join(", ")
        )));
    }
    Ok(Selector {
        exclude_logins: except.logins.clone(),
        exclude_application_names: except.application_names.clone(),
        ..Selector::default()
    })
}

/// Plans a drain, refusing before anything is connected: no reason, no `for` (nor
/// `permanent`), a target without `locks = true`, the store's database or a target's own,
/// an `except` that cannot be honoured, an engine with no per-database gate unless its
/// accounts are to be locked (`lock_accounts`).
pub fn drain(
    config: &Config,
    request: &DrainRequest,
    now: DateTime<Utc>,
) -> Result<DrainPlans, ResolveError> {
    let invalid = |why: String| ResolveError::Invalid(why);
    if request.reason.trim().is_empty() {
        return Err(invalid("reason is required".into()));
    }
    check_reason(&request.reason)?;
    let span = super::schedule::span(
        config,
        &request.schedule(),
        (request.duration, request.permanent),
        ("a drain", "15m"),
        now,
    )?;
    let (schedule, until, expired) = (span.schedule, span.until, span.expired);
    let target = &request.target;
    let t = config
        .targets
        .get(target)
        .ok_or_else(|| ResolveError::UnknownTarget(target.clone()))?;
    names::check_on(NameKind::Database, &request.database, target, t.engine)?;
    if !t.locks {
        return Err(invalid(format!(
            "target {target:?} does not have locks = true: draining needs grants that allow \
             more than draining, so it is off unless the target enables it"
        )));
    }
    let ending = Ending {
        mode: request.mode,
        grace: request.grace,
    };
    ending
        .validate(MAX_GRACE)
        .map_err(|e| invalid(e.to_string()))?;
    if ending.mode == Mode::Cancel {
        return Err(invalid(
            "mode cancel leaves the sessions connected: a drain ends them (terminate, or \
             graceful with a grace)"
                .into(),
        ));
    }
    let spare = spare_of(&request.except)?;
    match t.engine {
        Engine::Mysql if request.lock_accounts => {}
        Engine::Mysql => {
            return Err(invalid(format!(
                "target {target:?} is MySQL/MariaDB, which has no per-database gate: give \
                 lock_accounts: true to lock the accounts whose sessions use {:?} instead. \
                 Each locked account then loses every database on the server, not just this \
                 one, until the drain ends; accounts not connected now are not covered",
                request.database
            )));
        }
        Engine::Sqlserver if !request.except.fields().is_empty() => {
            return Err(invalid(format!(
                "target {target:?} is SQL Server, where except cannot be honoured: \
                 RESTRICTED_USER WITH ROLLBACK IMMEDIATE ends every session but \
                 administrators'"
            )));
        }
        Engine::Sqlserver if ending.mode == Mode::Graceful => {
            return Err(invalid(format!(
                "target {target:?} is SQL Server, where graceful cannot be honoured: \
                 RESTRICTED_USER WITH ROLLBACK IMMEDIATE ends the sessions at once"
            )));
        }
        _ => {}
    }
    if request.lock_accounts && t.engine != Engine::Mysql {
        return Err(invalid(
            "lock_accounts is for MySQL/MariaDB targets only".into(),
        ));
    }
    check_not_own(config, target, &request.database)?;
    let steps = vec![Step {
        target: target.clone(),
        logins: Vec::new(),
        protected: config.protected_on(target),
    }];
    let drain = Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Drain {
            database: request.database.clone(),
            until,
            spare: Box::new(spare),
            lock_accounts: request.lock_accounts,
            expiry: None,
        },
        scope: Some(Scope::All),
        dry_run: false,
        reason: Some(request.reason.clone()),
        cutoff_defaulted: false,
        ending,
        selection: None,
        schedule,
        steps: steps.clone(),
    };
    let mut drain = drain;
    let expiry = until.filter(|_| !expired).map(|until| {
        let plan = undrain_plan(
            drain.action_id,
            &request.database,
            steps,
            "expiry",
            "drain expired",
        );
        (plan, until)
    });
    if let (Origin::Drain { expiry: id, .. }, Some((plan, _))) = (&mut drain.origin, &expiry) {
        *id = Some(plan.action_id);
    }
    Ok(DrainPlans { drain, expiry })
}

/// The plan that ends drain `drain_id` of `database` on the targets of `steps`.
pub fn undrain_plan(
    drain_id: Uuid,
    database: &str,
    steps: Vec<Step>,
    ended_by: &str,
    reason: &str,
) -> Plan {
    Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Undrain {
            drain_id,
            database: database.to_owned(),
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

/// Where a connection string points, as far as it can be read: host, port, database.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    host: Option<String>,
    port: Option<u16>,
    database: Option<String>,
}

impl Place {
    /// Reads a URL (`postgres://…`, `mysql://…`) or an ADO.NET string (SQL Server).
    fn read(text: &str, engine: Engine) -> Place {
        let default_port = match engine {
            Engine::Postgres => 5432,
            Engine::Mysql => 3306,
            Engine::Sqlserver => 1433,
        };
        if let Ok(url) = url::Url::parse(text)
            && url.has_host()
        {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let path = decode(url.path().trim_start_matches('/'));
            // PostgreSQL connects to the database named like the user when none is given.
            let database = match (path.is_empty(), engine) {
                (false, _) => Some(path),
                (true, Engine::Postgres) if !url.username().is_empty() => {
                    Some(decode(url.username()))
                }
                (true, _) => None,
            };
            return Place {
                host: url.host_str().map(normal_host),
                port: Some(url.port().unwrap_or(default_port)),
                database,
            };
        }
        let mut place = Place {
            host: None,
            port: None,
            database: None,
        };
        for (key, value) in text.split(';').filter_map(|p| p.split_once('=')) {
            let value = value.trim();
            match key.trim().to_ascii_lowercase().as_str() {
                "server" | "data source" | "address" | "addr" => {
                    let value = value.trim_start_matches("tcp:");
                    let (host, port) = match value.split_once(',') {
                        Some((h, p)) => (h, p.trim().parse().ok()),
                        None => (value, Some(default_port)),
                    };
                    place.host = Some(normal_host(host));
                    place.port = port;
                }
                "database" | "initial catalog" => place.database = Some(value.to_owned()),
                _ => {}
            }
        }
        place
    }

    /// Whether both may be the same server: equal where both are known.
    fn same_server(&self, other: &Place) -> bool {
        let agree = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let ports = match (self.port, other.port) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        agree(&self.host, &other.host) && ports
    }
}

/// Loopback spelled any way is one host.
fn normal_host(host: &str) -> String {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    match host.to_ascii_lowercase().as_str() {
        "localhost" | "127.0.0.1" | "::1" | "." | "(local)" => "loopback".to_owned(),
        other => other.to_owned(),
    }
}

/// Refuses the store's database and the database any target's `url` or `lock_url`
/// connects to, where it is on `target`'s server: draining them would cut sever off.
fn check_not_own(config: &Config, target: &str, database: &str) -> Result<(), ResolveError> {
    let t = &config.targets[target];
    let here = t
        .url
        .load("url")
        .map(|u| Place::read(u.expose_secret(), t.engine))
        .ok();
    let same_db = |place: &Place| {
        place.database.as_deref().is_some_and(|d| match t.engine {
            // SQL Server and MySQL compare names case-insensitively by default.
            Engine::Postgres => d == database,
            _ => d.eq_ignore_ascii_case(database),
        })
    };
    let on_this_server = |place: &Place| here.as_ref().is_none_or(|h| h.same_server(place));
    for (id, other) in &config.targets {
        if other.engine != t.engine {
            continue;
        }
        for (key, source) in [
            ("url", Some(&other.url)),
            ("lock_url", other.lock_url.as_ref()),
        ] {
            let Some(Ok(text)) = source.map(|s| s.load(key)) else {
                continue;
            };
            let place = Place::read(text.expose_secret(), other.engine);
            if same_db(&place) && (id == target || on_this_server(&place)) {
                return Err(ResolveError::Invalid(format!(
                    "database {database:?} is the one target {id:?}'s {key} connects to: \
                     sever would cut itself off"
                )));
            }
        }
    }
    if t.engine == Engine::Postgres
        && let Ok(store) = config.store.url.load("store.url")
        && store.expose_secret().starts_with("postgres")
    {
        let place = Place::read(store.expose_secret(), Engine::Postgres);
        if same_db(&place) && on_this_server(&place) {
            return Err(ResolveError::Invalid(format!(
                "database {database:?} holds sever's store: it cannot be drained"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_read_from_urls_and_ado_strings() {
        let pg = Place::read("postgres://u:p@localhost:5433/orders", Engine::Postgres);
        assert_eq!(pg.host.as_deref(), Some("loopback"));
        assert_eq!(pg.port, Some(5433));
        assert_eq!(pg.database.as_deref(), Some("orders"));
        let user_db = Place::read("postgres://app@db.example", Engine::Postgres);
        assert_eq!(user_db.database.as_deref(), Some("app"));
        assert_eq!(user_db.port, Some(5432));
        let ado = Place::read(
            "Server=tcp:sql.example,1444;Initial Catalog=Shop;User Id=x;Password=y",
            Engine::Sqlserver,
        );
        assert_eq!(ado.host.as_deref(), Some("sql.example"));
        assert_eq!(ado.port, Some(1444));
        assert_eq!(ado.database.as_deref(), Some("Shop"));
        assert!(pg.same_server(&Place::read(
            "postgres://127.0.0.1:5433/x",
            Engine::Postgres
        )));
        assert!(!pg.same_server(&Place::read(
            "postgres://127.0.0.1:5432/x",
            Engine::Postgres
        )));
    }

    #[test]
    fn except_becomes_exclusions_or_is_refused() {
        let except: Selector =
            serde_json::from_value(serde_json::json!({"application_names": ["pg_dump"],
                "logins": ["dba"]}))
            .unwrap();
        let spare = spare_of(&except).unwrap();
        assert_eq!(spare.exclude_logins, vec!["dba".to_owned()]);
        assert_eq!(spare.exclude_application_names.len(), 1);
        assert!(spare.logins.is_empty() && spare.application_names.is_empty());
        for refused in [
            serde_json::json!({"exclude_logins": ["x"]}),
            serde_json::json!({"client_addrs": ["10.0.0.0/8"]}),
            serde_json::json!({"states": ["idle"]}),
        ] {
            let except: Selector = serde_json::from_value(refused.clone()).unwrap();
            assert!(spare_of(&except).is_err(), "{refused}");
        }
    }
}
