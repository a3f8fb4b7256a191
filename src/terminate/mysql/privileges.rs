//! Administrators: accounts whose sessions sever never ends, decided from the privilege
//! tables when the sessions are selected (so a privilege granted since start-up counts).
//!
//! An account is an administrator when it, or any role it can activate, holds
//! - on MariaDB: `SUPER` or `CONNECTION ADMIN` (the part of `SUPER` that MariaDB 10.5 split
//!   off for managing other connections, MySQL 8's `CONNECTION_ADMIN`), or any of them
//!   through the `PUBLIC` role;
//! - on MySQL 8: `SUPER`, `CONNECTION_ADMIN` or `SYSTEM_USER`.
//!
//! "Can activate" is every role granted to the account, directly or through other roles,
//! not only its default role: `SET ROLE` needs no privilege. The tables are read in one
//! set-based statement per selection (a recursive query walks the role grants).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{MySqlConnection, Row};

use crate::terminate::{EngineError, Standing, classify, sqlx_error};

/// Which server runs the target; their privilege tables differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    /// MariaDB 10.4+: `mysql.global_priv` (a JSON bit set) and `mysql.roles_mapping`.
    MariaDb,
    /// MySQL 8: `mysql.user`, `mysql.global_grants`, `mysql.role_edges`, `mysql.default_roles`.
    Mysql,
}

impl Flavor {
    /// The flavor `VERSION()` names (MariaDB always says so in it).
    pub(super) fn of_version(version: &str) -> Self {
        if version.contains("MariaDB") {
            Self::MariaDb
        } else {
            Self::Mysql
        }
    }

    /// The `SELECT` grants sever's login needs to read the privileges.
    pub(super) fn grants(self) -> &'static str {
        match self {
            Self::MariaDb => "grant SELECT on mysql.global_priv and mysql.roles_mapping",
            Self::Mysql => {
                "grant SELECT on mysql.user, mysql.global_grants, mysql.role_edges and mysql.default_roles"
            }
        }
    }
}

/// MariaDB `global_priv.access` bits of an administrator: `SUPER` (bit 15) and
/// `CONNECTION ADMIN` (bit 32), as MariaDB 10.5+ numbers them.
const MARIADB_ADMIN_BITS: u64 = (1 << 15) | (1 << 32);

/// Each account of the users, with every role it can reach (itself, `PUBLIC`, and roles
/// granted to either, transitively; `PUBLIC` need not have a row), and whether any of them holds an administrator bit.
/// `{users}` is a list of `?`, one per user, bound as bytes: the comparison is exact and no
/// character set conversion can fail (`User` is utf8mb3, a login may not be).
const MARIADB_SQL: &str = "WITH RECURSIVE reach (account_user, account_host, role_user, role_host) AS ( \
    SELECT User, Host, User, Host FROM mysql.global_priv \
    WHERE Host <> '' AND CAST(User AS BINARY) IN ({users}) \
  UNION \
    SELECT User, Host, 'PUBLIC', '' FROM mysql.global_priv \
    WHERE Host <> '' AND CAST(User AS BINARY) IN ({users}) \
  UNION \
    SELECT r.account_user, r.account_host, m.Role, '' \
    FROM reach AS r \
    JOIN mysql.roles_mapping AS m ON m.User = r.role_user AND m.Host = r.role_host \
) \
SELECT r.account_user AS user, r.account_host AS host, \
    CAST(MAX((COALESCE(CAST(JSON_VALUE(p.Priv, '$.access') AS UNSIGNED), 0) & {bits}) <> 0) AS SIGNED) AS admin \
FROM reach AS r \
LEFT JOIN mysql.global_priv AS p ON p.User = r.role_user AND p.Host = r.role_host \
GROUP BY r.account_user, r.account_host";

/// The same for MySQL 8: roles are accounts, granted through `role_edges` (and named as
/// defaults in `default_roles`); dynamic privileges are rows of `global_grants`.
const MYSQL_SQL: &str = "WITH RECURSIVE reach (account_user, account_host, role_user, role_host) AS ( \
    SELECT User, Host, User, Host FROM mysql.user WHERE CAST(User AS BINARY) IN ({users}) \
  UNION \
    SELECT r.account_user, r.account_host, e.FROM_USER, e.FROM_HOST \
    FROM reach AS r \
    JOIN mysql.role_edges AS e ON e.TO_USER = r.role_user AND e.TO_HOST = r.role_host \
  UNION \
    SELECT r.account_user, r.account_host, d.DEFAULT_ROLE_USER, d.DEFAULT_ROLE_HOST \
    FROM reach AS r \
    JOIN mysql.default_roles AS d ON d.USER = r.role_user AND d.HOST = r.role_host \
) \
SELECT r.account_user AS user, r.account_host AS host, \
    CAST(MAX(COALESCE(u.Super_priv = 'Y', 0) OR g.PRIV IS NOT NULL) AS SIGNED) AS admin \
FROM reach AS r \
LEFT JOIN mysql.user AS u ON u.User = r.role_user AND u.Host = r.role_host \
LEFT JOIN mysql.global_grants AS g ON g.USER = r.role_user AND g.HOST = r.role_host \
    AND g.PRIV IN ('CONNECTION_ADMIN', 'SYSTEM_USER') \
GROUP BY r.account_user, r.account_host";

/// How many times a statement lists the users (each list is bound in full).
fn sql_lists(template: &str) -> usize {
    template.matches("{users}").count()
}

/// One account of a user: its host pattern, and whether it is an administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AccountPrivileges {
    /// The account's host pattern.
    pub host: String,
    /// Whether it, or a role it can activate, holds an administrator privilege.
    pub admin: bool,
}

/// What sever could read about the accounts of some users.
#[derive(Debug, Clone)]
pub(super) enum Privileges {
    /// Every account of each user (a user missing here has no account: it was dropped).
    Known(BTreeMap<String, Vec<AccountPrivileges>>),
    /// The privilege tables could not be read: why, and the grant that fixes it.
    Unknown(String),
}

impl Privileges {
    /// Reads the accounts of `users`. A refusal (no `SELECT` on the tables, or a table this
    /// server does not have) is `Unknown`; anything else (a lost connection) is an error.
    pub(super) async fn read(
        conn: &mut MySqlConnection,
        flavor: Flavor,
        users: &BTreeSet<&str>,
    ) -> Result<Self, EngineError> {
        if users.is_empty() {
            return Ok(Self::Known(BTreeMap::new()));
        }
        let placeholders = vec!["?"; users.len()].join(", ");
        let template = match flavor {
            Flavor::MariaDb => MARIADB_SQL,
            Flavor::Mysql => MYSQL_SQL,
        };
        // Only `?` placeholders and a constant reach the text; the users are bound.
        let sql = template
            .replace("{users}", &placeholders)
            .replace("{bits}", &MARIADB_ADMIN_BITS.to_string());
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for _ in 0..sql_lists(template) {
            for user in users {
                query = query.bind(user.as_bytes());
            }
        }
        let rows = match query.fetch_all(conn).await {
            Ok(rows) => rows,
            Err(e) => {
                let refused = matches!(
                    classify::sqlx_verdict(&e),
                    classify::Verdict::Failed(classify::ErrorClass::Deterministic)
                );
                return if refused {
                    Ok(Self::Unknown(format!(
                        "sever cannot read the privilege tables ({}): {e}",
                        flavor.grants()
                    )))
                } else {
                    Err(sqlx_error(e))
                };
            }
        };
        let mut accounts: BTreeMap<String, Vec<AccountPrivileges>> = BTreeMap::new();
        for row in rows {
            let user: String = row.try_get("user").map_err(sqlx_error)?;
            let host: String = row.try_get("host").map_err(sqlx_error)?;
            let admin: i64 = row.try_get("admin").map_err(sqlx_error)?;
            accounts.entry(user).or_default().push(AccountPrivileges {
                host,
                admin: admin != 0,
            });
        }
        Ok(Self::Known(accounts))
    }

    /// The host patterns of `user`'s accounts, when known.
    pub(super) fn hosts(&self, user: &str) -> Option<Vec<String>> {
        match self {
            Self::Known(accounts) => Some(
                accounts
                    .get(user)
                    .map(|a| a.iter().map(|a| a.host.clone()).collect())
                    .unwrap_or_default(),
            ),
            Self::Unknown(_) => None,
        }
    }

    /// What a session of `user` is, given the account it authenticated as (`None` when no
    /// account of the user matches its host, e.g. the server resolves client names).
    pub(super) fn standing(&self, user: &str, account_host: Option<&str>) -> Standing {
        let Self::Known(accounts) = self else {
            return Standing::Unknown;
        };
        let accounts = accounts.get(user).map(Vec::as_slice).unwrap_or_default();
        let admin = match account_host {
            Some(host) => accounts.iter().any(|a| a.host == host && a.admin),
            // Which account it is cannot be told: it is an administrator if any may be.
            None => accounts.iter().any(|a| a.admin),
        };
        if admin {
            Standing::Administrator
        } else {
            Standing::Ordinary
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(accounts: &[(&str, &str, bool)]) -> Privileges {
        let mut map: BTreeMap<String, Vec<AccountPrivileges>> = BTreeMap::new();
        for (user, host, admin) in accounts {
            map.entry((*user).into())
                .or_default()
                .push(AccountPrivileges {
                    host: (*host).into(),
                    admin: *admin,
                });
        }
        Privileges::Known(map)
    }

    #[test]
    fn a_sessions_own_account_decides_and_an_unknown_account_counts_as_any() {
        let p = known(&[("app", "%", false), ("app", "localhost", true)]);
        assert_eq!(p.standing("app", Some("%")), Standing::Ordinary);
        assert_eq!(
            p.standing("app", Some("localhost")),
            Standing::Administrator
        );
        assert_eq!(p.standing("app", None), Standing::Administrator);
        // A dropped account holds no privileges.
        assert_eq!(p.standing("gone", None), Standing::Ordinary);
        assert_eq!(
            Privileges::Unknown("no".into()).standing("app", Some("%")),
            Standing::Unknown
        );
    }

    #[test]
    fn the_flavor_comes_from_the_version() {
        assert_eq!(
            Flavor::of_version("10.11.6-MariaDB-0+deb12u1"),
            Flavor::MariaDb
        );
        assert_eq!(Flavor::of_version("8.0.36"), Flavor::Mysql);
    }
}
