//! What sever knows about a PostgreSQL target's roles, by oid: after `DROP ROLE` a session
//! keeps only its role's oid, so whether an orphaned session may be ended rests on what
//! sever learned about that oid while the role still existed.
//!
//! Learning records, per target, the oids of sever's own logins (the target's admin login and
//! the store's login), of every superuser, of the protected logins, and of every role matching
//! the target's sweep pattern. An orphan whose oid was learned as sweepable (or belongs to a
//! login sever remembered for a rotation or revocation) may be swept; one learned as anything
//! else is spared as such; one never learned is spared as `login_unknown`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use sqlx::{PgConnection, Row};

use super::{EngineError, sqlx_error as query_error};
use crate::store::{LearnedRole, RoleClass, Store};

/// The roles worth learning, each with its class: sever's own logins (`session_user`, the
/// names in `$1`), superusers, the protected logins (`$2`) and the roles matching the sweep
/// pattern (`$3`, `LIKE`; none when null). Each role gets the first class that applies.
const LEARN_SQL: &str = r#"
SELECT r.oid::int8 AS oid, r.rolname::text AS rolname,
       CASE
           WHEN r.rolname = session_user OR r.rolname = ANY($1::text[]) THEN 'own_login'
           WHEN r.rolsuper THEN 'superuser'
           WHEN r.rolname = ANY($2::text[]) THEN 'protected'
           ELSE 'sweepable'
       END AS class
FROM pg_roles r
WHERE r.rolname = session_user
   OR r.rolname = ANY($1::text[])
   OR r.rolsuper
   OR r.rolname = ANY($2::text[])
   OR ($3::text IS NOT NULL AND r.rolname LIKE $3::text)
"#;

/// Which of the given oids name neither a role nor any session any more: nothing is left to
/// tell apart, and a new session can never carry a dropped role's oid.
const GONE_SQL: &str = r#"
SELECT o.oid
FROM unnest($1::int8[]) AS o(oid)
WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid::int8 = o.oid)
  AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.usesysid::int8 = o.oid)
"#;

/// The oids of dropped roles' sessions sorted by what sever may do with them, and the names
/// sever knew them by; the arrays the termination and sweep statements take.
#[derive(Debug, Clone, Default)]
pub(super) struct Known {
    /// Names that are sever's own login besides the target connection's: the store's login.
    pub own_names: Vec<String>,
    /// Oids learned as sever's own logins.
    pub own: Vec<i64>,
    /// Oids learned as superusers.
    pub superuser: Vec<i64>,
    /// Oids learned as protected logins, or remembered under a name now protected.
    pub protected: Vec<i64>,
    /// Oids learned as sweepable, or remembered for a rotation or revocation.
    pub sweepable: Vec<i64>,
    /// Oid → the name it was learned or remembered under.
    pub names: BTreeMap<i64, String>,
}

impl Known {
    /// Sorts learned roles and remembered identities (login, oid) into classes; an oid in
    /// more than one class counts as the most protective of them, and a remembered login
    /// now protected or sever's own counts as that.
    pub fn new(
        store_login: Option<&str>,
        protected: &BTreeSet<String>,
        learned: &[LearnedRole],
        remembered: &[(String, i64)],
    ) -> Self {
        let mut classes: BTreeMap<i64, RoleClass> = BTreeMap::new();
        let mut names = BTreeMap::new();
        let own_names: Vec<String> = store_login.map(str::to_owned).into_iter().collect();
        let mut add = |oid: i64, login: &str, class: RoleClass| {
            let class = if own_names.iter().any(|n| n == login) {
                RoleClass::OwnLogin
            } else if protected.contains(login) {
                class.min(RoleClass::Protected)
            } else {
                class
            };
            classes
                .entry(oid)
                .and_modify(|c| *c = (*c).min(class))
                .or_insert(class);
            names.entry(oid).or_insert_with(|| login.to_owned());
        };
        for role in learned {
            if let Ok(oid) = role.identity.parse() {
                add(oid, &role.login, role.class);
            }
        }
        for (login, oid) in remembered {
            add(*oid, login, RoleClass::Sweepable);
        }
        let mut known = Self {
            own_names,
            names,
            ..Self::default()
        };
        for (oid, class) in classes {
            match class {
                RoleClass::OwnLogin => known.own.push(oid),
                RoleClass::Superuser => known.superuser.push(oid),
                RoleClass::Protected => known.protected.push(oid),
                RoleClass::Sweepable => known.sweepable.push(oid),
            }
        }
        known
    }
}

fn store_error(e: crate::store::StoreError) -> EngineError {
    EngineError::Query(format!("state store: {e}"))
}

/// Learns the roles of `target` that `what` and sever's own logins name, records those not
/// known yet, and forgets learned roles gone with all their sessions. Returns every role
/// known on `target` afterwards.
pub(super) async fn learn(
    conn: &mut PgConnection,
    store: &Store,
    target: &str,
    protected: &BTreeSet<String>,
    sweep_pattern: Option<&str>,
) -> Result<Vec<LearnedRole>, EngineError> {
    let own: Vec<&str> = store.login().into_iter().collect();
    let protected: Vec<&str> = protected.iter().map(String::as_str).collect();
    let rows = sqlx::query(LEARN_SQL)
        .bind(&own)
        .bind(&protected)
        .bind(sweep_pattern)
        .fetch_all(&mut *conn)
        .await
        .map_err(query_error)?;
    let mut current = BTreeSet::new();
    for row in &rows {
        let oid: i64 = row.try_get("oid").map_err(query_error)?;
        let class: String = row.try_get("class").map_err(query_error)?;
        let Some(class) = RoleClass::parse(&class) else {
            continue;
        };
        current.insert(LearnedRole {
            identity: oid.to_string(),
            login: row.try_get("rolname").map_err(query_error)?,
            class,
        });
    }
    let known = store.learned_roles(target).await.map_err(store_error)?;
    // Only what is new is written: a commit per sweep for nothing would cost the store.
    let new: Vec<LearnedRole> = current
        .iter()
        .filter(|r| !known.contains(r))
        .cloned()
        .collect();
    store
        .learn_roles(target, &new, Utc::now())
        .await
        .map_err(store_error)?;

    // Known oids the learning did not see again are dropped, renamed or no longer of
    // interest; those without a role or a session left are forgotten, so the table holds
    // live roles and orphans only, not every dynamic login ever made.
    let seen: BTreeSet<&str> = current.iter().map(|r| r.identity.as_str()).collect();
    let unseen: BTreeSet<i64> = known
        .iter()
        .filter(|r| !seen.contains(r.identity.as_str()))
        .filter_map(|r| r.identity.parse().ok())
        .collect();
    let mut gone = Vec::new();
    if !unseen.is_empty() {
        let unseen: Vec<i64> = unseen.into_iter().collect();
        let rows = sqlx::query(GONE_SQL)
            .bind(&unseen)
            .fetch_all(&mut *conn)
            .await
            .map_err(query_error)?;
        for row in rows {
            gone.push(
                row.try_get::<i64, _>("oid")
                    .map_err(query_error)?
                    .to_string(),
            );
        }
        store
            .forget_roles(target, &gone)
            .await
            .map_err(store_error)?;
    }
    let mut all: Vec<LearnedRole> = known
        .into_iter()
        .filter(|r| !gone.contains(&r.identity))
        .chain(new)
        .collect();
    all.sort();
    all.dedup();
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(identity: &str, login: &str, class: RoleClass) -> LearnedRole {
        LearnedRole {
            identity: identity.into(),
            login: login.into(),
            class,
        }
    }

    #[test]
    fn an_oid_counts_as_its_most_protective_class() {
        let protected = BTreeSet::from(["keep".to_owned()]);
        let learned = [
            role("1", "v-a", RoleClass::Sweepable),
            role("1", "v-a", RoleClass::Superuser),
            role("2", "v-b", RoleClass::Sweepable),
            role("3", "keep", RoleClass::Sweepable),
            role("4", "store", RoleClass::Sweepable),
            role("5", "boss", RoleClass::Protected),
        ];
        let remembered = [("app".to_owned(), 6), ("keep".to_owned(), 7)];
        let known = Known::new(Some("store"), &protected, &learned, &remembered);
        assert_eq!(known.own_names, ["store"]);
        assert_eq!(known.own, [4]);
        assert_eq!(known.superuser, [1]);
        assert_eq!(known.protected, [3, 5, 7]);
        assert_eq!(known.sweepable, [2, 6]);
        assert_eq!(known.names[&6], "app");
    }
}
