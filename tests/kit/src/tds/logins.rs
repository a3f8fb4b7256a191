//! Login locks in the stand-in (issue 19): a per-login disabled flag and, for contained
//! database users, whether each holds `CONNECT` in its database; the engine's gate queries,
//! `ALTER LOGIN … DISABLE | ENABLE`, and `REVOKE CONNECT` / `GRANT CONNECT` run in a
//! database through `EXEC [db].sys.sp_executesql @P1`.
//!
//! Statements answered (tokens compared, so whitespace, case and comments are free):
//!
//! - [`LOGIN_GATE`] with the login as `@P1` → one row, two nullable `int` columns:
//!   `may_alter` (1 unless [`TdsStandIn::set_alter_any_login`]`(false)`) and `is_disabled`
//!   (the login's flag; NULL for an unknown login, and, without `ALTER ANY LOGIN` and
//!   without `VIEW ANY DEFINITION`, for every login but the caller's, as the catalog hides
//!   them).
//! - [`USER_GATE`] with `{db}` any bracketed or plain name, the user as `@P1` and the
//!   database as `@P2` → `may_alter` (`HAS_PERMS_BY_NAME(@P2, 'DATABASE', 'CONTROL')`: 1
//!   unless [`TdsStandIn::set_control_database`]`(false)`) and `can_connect` (1/0; NULL for
//!   an unknown user). An unknown `{db}` gets 208 `Invalid object name`.
//! - `ALTER LOGIN <name> DISABLE` / `ENABLE` as a batch: sets the flag. Without
//!   `ALTER ANY LOGIN`, or for an unknown login, error 15151 `Cannot alter the login 'x',
//!   because it does not exist or you do not have permission.` (class 16), as SQL Server
//!   answers both. A disabled login's LOGIN7 gets 18470 `Login failed for user 'x'. Reason:
//!   The account is disabled.`
//! - `EXEC <db>.sys.sp_executesql @P1` (an RPC, `@P1` a string) whose `@P1` is
//!   `REVOKE CONNECT FROM <user>` or `GRANT CONNECT TO <user>`: sets the user's `CONNECT`.
//!   An unknown database gets 911; an unknown user, or no `CONTROL` on the database, 15151
//!   `Cannot find the user 'x', because it does not exist or you do not have permission.`
//!
//! Any other `ALTER`, `EXEC`, `GRANT` or `REVOKE` gets 50000. The texts mirror the engine's
//! (`src/terminate/sqlserver/lock.rs`); they have not been run against a real SQL Server.

use std::sync::Mutex;

use super::{
    Cell, ColDef, ColType, Outcome, SqlError, SqlVal, State, TdsStandIn, Tok, lock, tokenize,
};

/// The server login's gate, as the engine asks for it.
pub(super) const LOGIN_GATE: &str = "SELECT HAS_PERMS_BY_NAME(NULL, NULL, 'ALTER ANY LOGIN') AS may_alter, \
    (SELECT CAST(p.is_disabled AS int) FROM sys.server_principals AS p \
     WHERE p.name = @P1 AND p.type IN ('S', 'U', 'G', 'E', 'X')) AS is_disabled";

/// A contained user's gate; `[__db__]` stands for the database, written as the engine
/// quotes it.
pub(super) const USER_GATE: &str = "SELECT HAS_PERMS_BY_NAME(@P2, 'DATABASE', 'CONTROL') AS may_alter, \
    (SELECT CASE WHEN EXISTS (SELECT 1 FROM [__db__].sys.database_permissions AS d \
        WHERE d.grantee_principal_id = u.principal_id AND d.class = 0 AND d.type = 'CO' \
        AND d.state IN ('G', 'W')) THEN 1 ELSE 0 END \
     FROM [__db__].sys.database_principals AS u WHERE u.name = @P1) AS can_connect";

/// What the stand-in knows about logins' and contained users' gates.
#[derive(Debug, Clone)]
pub(super) struct Gates {
    /// Disabled server logins, lower-cased.
    pub disabled: Vec<String>,
    /// Contained users: (database, user) lower-cased, and whether it holds `CONNECT`.
    pub users: Vec<((String, String), bool)>,
    /// Whether the caller holds `ALTER ANY LOGIN`.
    pub alter_any_login: bool,
    /// Whether the caller holds `CONTROL` on every database.
    pub control_database: bool,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            disabled: Vec::new(),
            users: Vec::new(),
            alter_any_login: true,
            control_database: true,
        }
    }
}

fn key(s: &str) -> String {
    s.trim_end_matches(' ').to_lowercase()
}

impl TdsStandIn {
    /// Disables (or enables) a login, as `ALTER LOGIN … DISABLE` would.
    pub fn set_login_disabled(&self, login: &str, disabled: bool) {
        let mut st = self.lock();
        let login = key(login);
        st.gates.disabled.retain(|l| *l != login);
        if disabled {
            st.gates.disabled.push(login);
        }
    }

    /// Whether `login` is disabled; `None` for a login the stand-in does not know.
    pub fn login_disabled(&self, login: &str) -> Option<bool> {
        let st = self.lock();
        known_login(&st, &key(login)).then(|| st.gates.disabled.contains(&key(login)))
    }

    /// Drops a login: it can no longer log in and its gate reads as absent.
    pub fn drop_login(&self, login: &str) {
        let mut st = self.lock();
        st.logins.retain(|(l, _)| !l.eq_ignore_ascii_case(login));
        st.gates.disabled.retain(|l| *l != key(login));
    }

    /// Creates (or replaces) contained user `user` of `database`, holding `CONNECT` or not.
    pub fn set_contained_user(&self, database: &str, user: &str, connect: bool) {
        let mut st = self.lock();
        st.register_database(database);
        let k = (key(database), key(user));
        st.gates.users.retain(|(u, _)| *u != k);
        st.gates.users.push((k, connect));
    }

    /// Whether contained user `user` of `database` holds `CONNECT`; `None` if unknown.
    pub fn contained_user_connect(&self, database: &str, user: &str) -> Option<bool> {
        let k = (key(database), key(user));
        self.lock()
            .gates
            .users
            .iter()
            .find(|(u, _)| *u == k)
            .map(|(_, c)| *c)
    }

    /// Drops contained user `user` of `database`.
    pub fn drop_contained_user(&self, database: &str, user: &str) {
        let k = (key(database), key(user));
        self.lock().gates.users.retain(|(u, _)| *u != k);
    }

    /// Whether the caller holds `ALTER ANY LOGIN` (default: it does).
    pub fn set_alter_any_login(&self, granted: bool) {
        self.lock().gates.alter_any_login = granted;
    }

    /// Whether the caller holds `CONTROL` on the databases (default: it does).
    pub fn set_control_database(&self, granted: bool) {
        self.lock().gates.control_database = granted;
    }
}

fn known_login(st: &State, login: &str) -> bool {
    st.logins.iter().any(|(l, _)| key(l) == login)
}

/// Whether a LOGIN7 for `login` is refused because the login is disabled.
pub(super) fn is_disabled(st: &State, login: &str) -> bool {
    st.gates.disabled.contains(&key(login))
}

fn param(params: &[(String, SqlVal)], n: usize) -> Option<&SqlVal> {
    let name = format!("p{n}");
    params
        .iter()
        .find(|(p, _)| p.trim_start_matches('@').eq_ignore_ascii_case(&name))
        .map(|(_, v)| v)
}

fn string_param(params: &[(String, SqlVal)], n: usize, what: &str) -> Result<String, SqlError> {
    match param(params, n) {
        Some(SqlVal::Str(s)) => Ok(s.clone()),
        _ => Err(SqlError::standin(format!(
            "{what} takes a string parameter @P{n}"
        ))),
    }
}

/// The database name `toks` has where [`USER_GATE`] has `[__db__]`, if `toks` is that query.
fn user_gate_database(toks: &[Tok]) -> Option<String> {
    let expected = tokenize(USER_GATE).ok()?;
    if expected.len() != toks.len() {
        return None;
    }
    let mut db: Option<String> = None;
    for (e, t) in expected.iter().zip(toks) {
        match (e, t) {
            (Tok::Ident(p), Tok::Ident(name)) if p == "__db__" => match &db {
                Some(seen) if seen != name => return None,
                _ => db = Some(name.clone()),
            },
            _ if e == t => {}
            _ => return None,
        }
    }
    db
}

/// Answers the statements of this module; `None` for any other statement.
pub(super) fn statement(
    state: &Mutex<State>,
    spid: i16,
    toks: &[Tok],
    params: &[(String, SqlVal)],
) -> Option<Result<Outcome, SqlError>> {
    if tokenize(LOGIN_GATE).is_ok_and(|expected| expected == toks) {
        return Some(login_gate(state, spid, params));
    }
    if let Some(db) = user_gate_database(toks) {
        return Some(user_gate(state, &db, params));
    }
    let first = toks.first()?;
    if first.is_kw("alter") && toks.get(1).is_some_and(|t| t.is_kw("login")) {
        return Some(alter_login(state, toks));
    }
    if first.is_kw("exec") || first.is_kw("execute") {
        return Some(exec_in_database(state, toks, params));
    }
    if first.is_kw("grant") || first.is_kw("revoke") || first.is_kw("alter") {
        return Some(Err(SqlError::standin(format!(
            "{} is simulated only as the lock statements (tds/logins.rs)",
            first.text().to_uppercase()
        ))));
    }
    None
}

fn int_col(name: &str) -> ColDef {
    ColDef {
        name: name.into(),
        ty: ColType::Int,
        nullable: true,
    }
}

fn flag(b: bool) -> Cell {
    Cell::I32(i32::from(b))
}

fn login_gate(
    state: &Mutex<State>,
    spid: i16,
    params: &[(String, SqlVal)],
) -> Result<Outcome, SqlError> {
    let login = key(&string_param(params, 1, "the login gate query")?);
    let st = lock(state);
    let own = st
        .sessions
        .get(&spid)
        .is_some_and(|s| key(&s.original_login_name) == login);
    let visible = st.gates.alter_any_login || st.view_any_definition || own;
    let is_disabled = match known_login(&st, &login) && visible {
        true => flag(st.gates.disabled.contains(&login)),
        false => Cell::Null,
    };
    Ok(Outcome::Rows {
        cols: vec![int_col("may_alter"), int_col("is_disabled")],
        rows: vec![vec![flag(st.gates.alter_any_login), is_disabled]],
    })
}

fn user_gate(
    state: &Mutex<State>,
    db: &str,
    params: &[(String, SqlVal)],
) -> Result<Outcome, SqlError> {
    let user = key(&string_param(params, 1, "the user gate query")?);
    string_param(params, 2, "the user gate query")?;
    let st = lock(state);
    if !st.databases.contains(&key(db)) {
        return Err(SqlError::new(
            208,
            1,
            16,
            format!("Invalid object name '{db}.sys.database_principals'."),
        ));
    }
    let can_connect = st
        .gates
        .users
        .iter()
        .find(|((d, u), _)| *d == key(db) && *u == user)
        .map_or(Cell::Null, |(_, c)| flag(*c));
    Ok(Outcome::Rows {
        cols: vec![int_col("may_alter"), int_col("can_connect")],
        rows: vec![vec![flag(st.gates.control_database), can_connect]],
    })
}

fn alter_login(state: &Mutex<State>, toks: &[Tok]) -> Result<Outcome, SqlError> {
    let (name, disable) = match toks {
        [_, _, Tok::Ident(name), action] if action.is_kw("disable") => (name, true),
        [_, _, Tok::Ident(name), action] if action.is_kw("enable") => (name, false),
        _ => {
            return Err(SqlError::standin(
                "ALTER LOGIN is simulated only as ALTER LOGIN <name> DISABLE | ENABLE".into(),
            ));
        }
    };
    let mut st = lock(state);
    if !st.gates.alter_any_login || !known_login(&st, name) {
        return Err(SqlError::new(
            15151,
            1,
            16,
            format!(
                "Cannot alter the login '{name}', because it does not exist or you do not have permission."
            ),
        ));
    }
    st.gates.disabled.retain(|l| l != name);
    if disable {
        st.gates.disabled.push(name.clone());
    }
    Ok(Outcome::Done)
}

fn exec_in_database(
    state: &Mutex<State>,
    toks: &[Tok],
    params: &[(String, SqlVal)],
) -> Result<Outcome, SqlError> {
    let db = match toks {
        [_, Tok::Ident(db), dot1, sys, dot2, proc, Tok::Var(p)]
            if dot1.is_sym(".")
                && sys.is_kw("sys")
                && dot2.is_sym(".")
                && proc.is_kw("sp_executesql")
                && p == "p1" =>
        {
            db
        }
        _ => {
            return Err(SqlError::standin(
                "EXEC is simulated only as EXEC <db>.sys.sp_executesql @P1".into(),
            ));
        }
    };
    let inner = string_param(params, 1, "EXEC <db>.sys.sp_executesql")?;
    let inner = tokenize(&inner)?;
    let (user, connect) = match inner.as_slice() {
        [g, c, to, Tok::Ident(user)]
            if g.is_kw("grant") && c.is_kw("connect") && to.is_kw("to") =>
        {
            (user, true)
        }
        [r, c, from, Tok::Ident(user)]
            if r.is_kw("revoke") && c.is_kw("connect") && from.is_kw("from") =>
        {
            (user, false)
        }
        _ => {
            return Err(SqlError::standin(
                "a database's sp_executesql runs only GRANT CONNECT TO <user> or \
                 REVOKE CONNECT FROM <user> here"
                    .into(),
            ));
        }
    };
    let mut st = lock(state);
    if !st.databases.contains(&key(db)) {
        return Err(SqlError::new(
            911,
            1,
            16,
            format!(
                "Database '{db}' does not exist. Make sure that the name is entered correctly."
            ),
        ));
    }
    let control = st.gates.control_database;
    let entry = st
        .gates
        .users
        .iter_mut()
        .find(|((d, u), _)| *d == key(db) && u == user);
    match entry {
        Some((_, c)) if control => {
            *c = connect;
            Ok(Outcome::Done)
        }
        _ => Err(SqlError::new(
            15151,
            1,
            16,
            format!(
                "Cannot find the user '{user}', because it does not exist or you do not have permission."
            ),
        )),
    }
}
