//! The administrator query of the stand-in: is a login a member of `sysadmin`, does it hold
//! `CONTROL SERVER`, and may the caller see every login's memberships and permissions.
//!
//! SQL Server answers it from `sys.server_principals`, `sys.server_role_members` and
//! `sys.server_permissions` through a recursive CTE, which the stand-in does not parse.
//! Instead it accepts exactly [`ADMIN_QUERY`] (compared token by token, so whitespace, case
//! and comments are free), with the login as the string parameter `@P1`, and answers one row
//! of three nullable `int` columns from what the test set:
//!
//! - `is_sysadmin`: [`TdsStandIn::set_sysadmin`] for the login (names compare
//!   case-insensitively, as under the default collation): `Some(true)` 1, `Some(false)` 0,
//!   `None` NULL. A login without a setting is 0 if the stand-in knows it (an allowed login,
//!   or the login of a session) and NULL otherwise, as SQL Server answers for an unknown
//!   login.
//! - `control_server`: 1 after [`TdsStandIn::grant_control_server`] for the login, else 0.
//! - `sees_all` (`HAS_PERMS_BY_NAME(NULL, NULL, 'VIEW ANY DEFINITION')`): 1 unless
//!   [`TdsStandIn::set_view_any_definition`]`(false)`. Then, as the catalog views hide other
//!   logins' rows, `is_sysadmin` is NULL and `control_server` 0 for every login but the
//!   caller's own.
//!
//! Any other statement starting with `WITH` gets error 50000. The text mirrors the engine's
//! query (`src/terminate/sqlserver.rs`); it has not been run against a real SQL Server.

use std::sync::Mutex;

use super::{
    Cell, ColDef, ColType, Outcome, SqlError, SqlVal, State, TdsStandIn, Tok, lock, tokenize,
};

/// The one administrator query the stand-in answers.
pub(super) const ADMIN_QUERY: &str = "WITH roles AS (
    SELECT principal_id FROM sys.server_principals WHERE name = @P1
    UNION ALL SELECT 2
    UNION ALL SELECT m.role_principal_id FROM sys.server_role_members AS m
        JOIN roles AS r ON m.member_principal_id = r.principal_id
)
SELECT IS_SRVROLEMEMBER('sysadmin', @P1) AS is_sysadmin,
    CASE WHEN EXISTS (SELECT 1 FROM sys.server_permissions AS p
        JOIN roles AS r ON p.grantee_principal_id = r.principal_id
        WHERE p.class = 100 AND p.type = 'CL' AND p.state IN ('G', 'W'))
    THEN 1 ELSE 0 END AS control_server,
    HAS_PERMS_BY_NAME(NULL, NULL, 'VIEW ANY DEFINITION') AS sees_all";

/// A login's server-level standing, as the tests set it.
#[derive(Debug, Clone, Default)]
pub(super) struct ServerStanding {
    /// `IS_SRVROLEMEMBER('sysadmin', login)`, when set: `None` answers NULL.
    pub sysadmin: Option<Option<bool>>,
    /// Holds `CONTROL SERVER` (itself or through a role).
    pub control_server: bool,
}

impl TdsStandIn {
    /// What `IS_SRVROLEMEMBER('sysadmin', login)` answers for `login` in the administrator
    /// query: `Some(true)` 1, `Some(false)` 0, `None` NULL.
    pub fn set_sysadmin(&self, login: &str, member: Option<bool>) {
        self.lock()
            .server_standing
            .entry(login.trim_end_matches(' ').to_lowercase())
            .or_default()
            .sysadmin = Some(member);
    }

    /// Grants `login` `CONTROL SERVER` in the administrator query.
    pub fn grant_control_server(&self, login: &str) {
        self.lock()
            .server_standing
            .entry(login.trim_end_matches(' ').to_lowercase())
            .or_default()
            .control_server = true;
    }

    /// Whether the caller holds `VIEW ANY DEFINITION` (default: it does).
    pub fn set_view_any_definition(&self, granted: bool) {
        self.lock().view_any_definition = granted;
    }
}

/// Whether `toks` is the administrator query.
pub(super) fn is_admin_query(toks: &[Tok]) -> bool {
    tokenize(ADMIN_QUERY).is_ok_and(|expected| expected == toks)
}

/// Answers the administrator query for the login in `@P1`, asked by session `spid`.
pub(super) fn admin_query(
    state: &Mutex<State>,
    spid: i16,
    params: &[(String, SqlVal)],
) -> Result<Outcome, SqlError> {
    let login = match params
        .iter()
        .find(|(name, _)| name.trim_start_matches('@').eq_ignore_ascii_case("p1"))
    {
        Some((_, SqlVal::Str(login))) => login.trim_end_matches(' ').to_lowercase(),
        _ => {
            return Err(SqlError::standin(
                "the administrator query takes the login as the string parameter @P1".into(),
            ));
        }
    };
    let st = lock(state);
    let own = st
        .sessions
        .get(&spid)
        .is_some_and(|s| s.original_login_name.eq_ignore_ascii_case(&login));
    let known = st
        .logins
        .iter()
        .any(|(l, _)| l.eq_ignore_ascii_case(&login))
        || st.sessions.values().any(|s| {
            s.original_login_name
                .trim_end_matches(' ')
                .eq_ignore_ascii_case(&login)
        });
    let standing = st.server_standing.get(&login).cloned().unwrap_or_default();
    let visible = st.view_any_definition || own;
    let flag = |b: bool| Cell::I32(i32::from(b));
    let is_sysadmin = match standing.sysadmin {
        _ if !visible => Cell::Null,
        Some(Some(member)) => flag(member),
        Some(None) => Cell::Null,
        None if known => flag(false),
        None => Cell::Null,
    };
    let col = |name: &str| ColDef {
        name: name.into(),
        ty: ColType::Int,
        nullable: true,
    };
    Ok(Outcome::Rows {
        cols: vec![col("is_sysadmin"), col("control_server"), col("sees_all")],
        rows: vec![vec![
            is_sysadmin,
            flag(visible && standing.control_server),
            flag(st.view_any_definition),
        ]],
    })
}
