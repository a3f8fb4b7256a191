//! `protected_logins` and `[targets.<id>]`: the database servers sever terminates sessions
//! on, their engines, pools and sweeps. Uses `config`'s own types and name rules.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::names::{self, NameKind};
use super::{ConfigError, UrlSource, check_id, invalid};

/// Database engines sever can terminate sessions on.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// PostgreSQL 10 or later.
    Postgres,
    /// MySQL 8 or MariaDB 10.5 or later.
    Mysql,
    /// Microsoft SQL Server 2016 or later, or Azure SQL (`url` is an ADO.NET connection string).
    Sqlserver,
}

impl Engine {
    /// The word the config, the API and the command line use.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Sqlserver => "sqlserver",
        }
    }
}

/// One database server (or cluster) sever connects to with its own admin login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Which engine speaks there.
    pub engine: Engine,
    /// Connection URL of sever's admin login.
    pub url: UrlSource,
    /// Logins never terminated on this target, in addition to the global list.
    #[serde(default)]
    pub protected_logins: Vec<String>,
    /// Connections kept in this target's pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Upper bound for opening a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Periodic sweep for sessions of dropped or expired (e.g. Vault dynamic) logins.
    pub sweep: Option<SweepConfig>,
    /// MySQL on Amazon RDS: terminate with `CALL mysql.rds_kill(id)` instead of `KILL`.
    #[serde(default)]
    pub rds: bool,
    /// Login locks (issue 19) may be taken here. Off by default: the grant they need
    /// (`CREATEROLE`, `CREATE USER`, `ALTER ANY LOGIN`) is close to a superuser's.
    #[serde(default)]
    pub locks: bool,
    /// Connection URL of the login that closes and restores logins, when it is not the
    /// admin login of `url` (preferred: the powerful grant stays off sever's everyday login).
    pub lock_url: Option<UrlSource>,
}

/// Sessions whose login was dropped, or whose login matches `pattern` and has expired
/// (`VALID UNTIL` in the past), are terminated every `interval`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// SQL `LIKE` pattern of the logins to check for expiry, e.g. Vault's `v-%`.
    pub pattern: String,
    /// How often to sweep.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How often the running sweeper learns the roles matching `pattern`, between sweeps. A
    /// dropped role's sessions are ended only when sever learned the role while it existed,
    /// so this bounds how short-lived a dynamic login may be and still be swept.
    #[serde(default = "default_learn_interval", with = "humantime_serde")]
    pub learn_interval: Duration,
}

fn default_learn_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_pool_size() -> u32 {
    2
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Checks the globally protected logins' names.
pub(super) fn validate_protected_logins(protected_logins: &[String]) -> Result<(), ConfigError> {
    for (i, login) in protected_logins.iter().enumerate() {
        names::check(NameKind::Login, login)
            .map_err(|e| invalid(format!("protected_logins[{i}]"), &e.to_string()))?;
    }
    Ok(())
}

/// Checks each target's id, engine-specific settings, pool and protected logins.
pub(super) fn validate(targets: &BTreeMap<String, TargetConfig>) -> Result<(), ConfigError> {
    for (id, target) in targets {
        check_id(id).map_err(|r| invalid(format!("targets.{id}"), r))?;
        if target.sweep.is_some() && target.engine != Engine::Postgres {
            return Err(invalid(
                format!("targets.{id}.sweep"),
                "sweeps find dropped or expired roles, which only PostgreSQL targets have",
            ));
        }
        if target.rds && target.engine != Engine::Mysql {
            return Err(invalid(
                format!("targets.{id}.rds"),
                "applies to MySQL targets only",
            ));
        }
        if let Some(sweep) = &target.sweep
            && (sweep.pattern.is_empty()
                || sweep.interval.is_zero()
                || sweep.learn_interval.is_zero())
        {
            return Err(invalid(
                format!("targets.{id}.sweep"),
                "pattern must not be empty and interval and learn_interval must be positive",
            ));
        }
        if target.lock_url.is_some() && !target.locks {
            return Err(invalid(
                format!("targets.{id}.lock_url"),
                "is used only with locks = true",
            ));
        }
        if target.pool_size == 0 {
            return Err(invalid(
                format!("targets.{id}.pool_size"),
                "must be positive",
            ));
        }
        for (i, login) in target.protected_logins.iter().enumerate() {
            names::check_on(NameKind::Login, login, id, target.engine).map_err(|e| {
                invalid(
                    format!("targets.{id}.protected_logins[{i}]"),
                    &e.to_string(),
                )
            })?;
        }
    }
    Ok(())
}
