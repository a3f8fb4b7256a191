//! Database drains in the stand-in (issue 19): each user database's `user_access_desc`
//! (`MULTI_USER` unless set), the engine's gate query and the two `ALTER DATABASE`
//! statements a drain sends.
//!
//! Statements answered (tokens compared, so whitespace, case and comments are free):
//!
//! - [`DB_GATE`] with the database as `@P1` → one `nvarchar` column `user_access_desc`, one
//!   row for a known database (user or system), none for an unknown one.
//! - `ALTER DATABASE <name> SET RESTRICTED_USER WITH ROLLBACK IMMEDIATE`: sets the access
//!   and removes every session whose database is `<name>`, but the caller's. A real server
//!   spares `db_owner`, `dbcreator` and `sysadmin` members; the stand-in spares no one.
//! - `ALTER DATABASE <name> SET MULTI_USER` (also `RESTRICTED_USER` / `SINGLE_USER` without
//!   `WITH`): sets the access.
//!
//! An unknown database gets 911. Any other `ALTER DATABASE` gets 50000. The texts mirror the
//! engine's (`src/terminate/sqlserver/lock.rs`); they have not been run against a real SQL
//! Server.

use std::sync::Mutex;

use super::{
    Cell, ColDef, ColType, Outcome, SqlError, SqlVal, State, TdsStandIn, Tok, lock,
    system_database_id, tokenize,
};

/// The database gate, as the engine asks for it.
pub(super) const DB_GATE: &str = "SELECT user_access_desc FROM sys.databases WHERE name = @P1";

fn key(s: &str) -> String {
    s.trim_end_matches(' ').to_lowercase()
}

fn known(st: &State, db: &str) -> bool {
    system_database_id(&key(db)).is_some() || st.databases.contains(&key(db))
}

impl TdsStandIn {
    /// `database`'s `user_access_desc`; `None` for a database the stand-in does not know.
    pub fn user_access(&self, database: &str) -> Option<String> {
        let st = self.lock();
        known(&st, database).then(|| access_of(&st, database))
    }

    /// Sets `database`'s access (registering the database), as `ALTER DATABASE … SET` would.
    pub fn set_user_access(&self, database: &str, access: &str) {
        let mut st = self.lock();
        st.register_database(database);
        let k = key(database);
        st.user_access.retain(|(d, _)| *d != k);
        st.user_access.push((k, access.to_owned()));
    }
}

fn access_of(st: &State, db: &str) -> String {
    st.user_access
        .iter()
        .find(|(d, _)| *d == key(db))
        .map_or_else(|| "MULTI_USER".to_owned(), |(_, a)| a.clone())
}

/// Answers the statements of this module; `None` for any other statement.
pub(super) fn statement(
    state: &Mutex<State>,
    spid: i16,
    toks: &[Tok],
    params: &[(String, SqlVal)],
) -> Option<Result<Outcome, SqlError>> {
    if tokenize(DB_GATE).is_ok_and(|expected| expected == toks) {
        return Some(gate(state, params));
    }
    if toks.first()?.is_kw("alter") && toks.get(1).is_some_and(|t| t.is_kw("database")) {
        return Some(alter_database(state, spid, toks));
    }
    None
}

fn gate(state: &Mutex<State>, params: &[(String, SqlVal)]) -> Result<Outcome, SqlError> {
    let db = match params
        .iter()
        .find(|(p, _)| p.trim_start_matches('@').eq_ignore_ascii_case("p1"))
    {
        Some((_, SqlVal::Str(s))) => s.clone(),
        _ => {
            return Err(SqlError::standin(
                "the database gate takes a string @P1".into(),
            ));
        }
    };
    let st = lock(state);
    let rows = match known(&st, &db) {
        true => vec![vec![Cell::Str(access_of(&st, &db))]],
        false => Vec::new(),
    };
    Ok(Outcome::Rows {
        cols: vec![ColDef {
            name: "user_access_desc".into(),
            ty: ColType::NVarChar(60),
            nullable: true,
        }],
        rows,
    })
}

fn alter_database(state: &Mutex<State>, spid: i16, toks: &[Tok]) -> Result<Outcome, SqlError> {
    let (db, access, rollback) = match toks {
        [_, _, Tok::Ident(db), set, Tok::Ident(access)] if set.is_kw("set") => (db, access, false),
        [_, _, Tok::Ident(db), set, Tok::Ident(access), with, rb, imm]
            if set.is_kw("set")
                && with.is_kw("with")
                && rb.is_kw("rollback")
                && imm.is_kw("immediate") =>
        {
            (db, access, true)
        }
        _ => {
            return Err(SqlError::standin(
                "ALTER DATABASE is simulated only as ALTER DATABASE <name> SET <access> \
                 [WITH ROLLBACK IMMEDIATE] (tds/drains.rs)"
                    .into(),
            ));
        }
    };
    let access = access.to_uppercase();
    if !["MULTI_USER", "RESTRICTED_USER", "SINGLE_USER"].contains(&access.as_str()) {
        return Err(SqlError::standin(format!(
            "ALTER DATABASE … SET {access} is not simulated"
        )));
    }
    let mut st = lock(state);
    if !known(&st, db) {
        return Err(SqlError::new(
            911,
            1,
            16,
            format!(
                "Database '{db}' does not exist. Make sure that the name is entered correctly."
            ),
        ));
    }
    let k = key(db);
    st.user_access.retain(|(d, _)| *d != k);
    st.user_access.push((k.clone(), access));
    if rollback {
        st.sessions.retain(|id, s| {
            *id == spid || s.database_name.as_deref().map(key).as_deref() != Some(k.as_str())
        });
    }
    Ok(Outcome::Done)
}
