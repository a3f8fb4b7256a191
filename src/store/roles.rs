//! What sever learned each PostgreSQL role of a target to be, by oid, so a sweep can tell the
//! orphaned sessions of a dropped role apart: after `DROP ROLE` a session keeps only its
//! role's oid, and the name is gone everywhere.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, timestamp};

/// What a role was when sever learned it. The order is the order of precedence: an oid
/// learned as more than one class counts as the first of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoleClass {
    /// sever's own login: the target's admin login or the store's login.
    OwnLogin,
    /// A superuser, which sever never signals.
    Superuser,
    /// A protected login.
    Protected,
    /// A login a sweep may end once it is dropped: one matching the sweep pattern.
    Sweepable,
}

impl RoleClass {
    /// The class as stored and as the engines' statements name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OwnLogin => "own_login",
            Self::Superuser => "superuser",
            Self::Protected => "protected",
            Self::Sweepable => "sweepable",
        }
    }

    /// The class `text` names, if any.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::OwnLogin,
            Self::Superuser,
            Self::Protected,
            Self::Sweepable,
        ]
        .into_iter()
        .find(|c| c.as_str() == text)
    }
}

/// One learned role: its engine identity (oid), its name then, and its class.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LearnedRole {
    /// The role's identity on the target (PostgreSQL oid, as text).
    pub identity: String,
    /// Its name when it was learned.
    pub login: String,
    /// What it was.
    pub class: RoleClass,
}

/// What the store keeps about one target's roles that a rotation there reads before its
/// statement: the role identities remembered per login (a dropped role's sessions are
/// still found by oid) and the roles learned (so its own, a superuser's or a protected
/// role's orphaned sessions are spared).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredRoles {
    /// Every (login, identity) remembered on the target.
    pub identities: Vec<(String, String)>,
    /// Every role learned on the target, in order.
    pub learned: Vec<LearnedRole>,
}

impl StoredRoles {
    /// The remembered (login, identity) pairs of `logins`.
    pub fn identities_of(&self, logins: &[String]) -> Vec<(String, String)> {
        self.identities
            .iter()
            .filter(|(login, _)| logins.contains(login))
            .cloned()
            .collect()
    }
}

/// The most targets one [`Store::stored_roles`] statement names (padded to a power of two,
/// so its text is one of a few and stays prepared).
const ROLES_TARGETS: usize = 64;

impl Store {
    /// What is stored about the roles of each of `targets` ([`StoredRoles`]), in one
    /// statement (per [`ROLES_TARGETS`] targets): one round trip to a store on another host.
    pub async fn stored_roles(
        &self,
        targets: &[String],
    ) -> Result<std::collections::HashMap<String, StoredRoles>, StoreError> {
        let mut out: std::collections::HashMap<String, StoredRoles> = targets
            .iter()
            .map(|t| (t.clone(), StoredRoles::default()))
            .collect();
        for chunk in targets.chunks(ROLES_TARGETS) {
            let shape = super::padded(chunk.len());
            // Padded by repeating the last target.
            let sql = format!(
                "WITH t (target) AS (VALUES {}) \
                 SELECT 'identity' AS kind, target, login, identity, '' AS class \
                   FROM login_identities WHERE target IN (SELECT target FROM t) \
                 UNION ALL \
                 SELECT 'learned' AS kind, target, login, identity, class \
                   FROM learned_roles WHERE target IN (SELECT target FROM t)",
                super::values_list(self.backend, shape, 1)
            );
            let rows = super::again_if_lost(|| {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .persistent(super::keep_padded_prepared(shape));
                for i in 0..shape {
                    query = query.bind(&chunk[i.min(chunk.len() - 1)]);
                }
                query.fetch_all(&self.pool)
            })
            .await?;
            for row in rows {
                let target: String = row.try_get("target")?;
                let Some(roles) = out.get_mut(&target) else {
                    continue;
                };
                let login: String = row.try_get("login")?;
                let identity: String = row.try_get("identity")?;
                if row.try_get::<String, _>("kind")? == "identity" {
                    roles.identities.push((login, identity));
                } else if let Some(class) = RoleClass::parse(&row.try_get::<String, _>("class")?) {
                    // A class this version does not know is left out, never guessed.
                    roles.learned.push(LearnedRole {
                        identity,
                        login,
                        class,
                    });
                }
            }
        }
        for roles in out.values_mut() {
            roles.identities.sort();
            roles.learned.sort();
        }
        Ok(out)
    }

    /// Records `roles` as learned on `target` now (an existing row only has its time moved).
    pub async fn learn_roles(
        &self,
        target: &str,
        roles: &[LearnedRole],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if roles.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for role in roles {
            sqlx::query(
                "INSERT INTO learned_roles (target, identity, login, class, seen_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (target, identity, login, class) DO UPDATE SET seen_at = excluded.seen_at",
            )
            .bind(target)
            .bind(&role.identity)
            .bind(&role.login)
            .bind(role.class.as_str())
            .bind(timestamp(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every role learned on `target`.
    pub async fn learned_roles(&self, target: &str) -> Result<Vec<LearnedRole>, StoreError> {
        let rows = super::again_if_lost(|| {
            sqlx::query("SELECT identity, login, class FROM learned_roles WHERE target = $1")
                .bind(target)
                .fetch_all(&self.pool)
        })
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let class: String = row.try_get("class")?;
            // A class this version does not know is left out, never guessed.
            if let Some(class) = RoleClass::parse(&class) {
                out.push(LearnedRole {
                    identity: row.try_get("identity")?,
                    login: row.try_get("login")?,
                    class,
                });
            }
        }
        out.sort();
        Ok(out)
    }

    /// Forgets what was learned about `identities` on `target` (roles gone with all their
    /// sessions, so nothing is left to tell apart).
    pub async fn forget_roles(
        &self,
        target: &str,
        identities: &[String],
    ) -> Result<(), StoreError> {
        if identities.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for identity in identities {
            sqlx::query("DELETE FROM learned_roles WHERE target = $1 AND identity = $2")
                .bind(target)
                .bind(identity)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    #[tokio::test]
    async fn learned_roles_are_kept_per_target_and_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        let store = Store::connect(&SecretString::from(url)).await.unwrap();
        let role = |identity: &str, login: &str, class| LearnedRole {
            identity: identity.into(),
            login: login.into(),
            class,
        };
        let now = Utc::now();
        let learned = vec![
            role("10", "postgres", RoleClass::Superuser),
            role("20", "v-app-1", RoleClass::Sweepable),
            role("20", "v-app-1", RoleClass::Protected),
        ];
        store.learn_roles("pg", &learned, now).await.unwrap();
        // Learning the same again changes nothing but the time.
        store.learn_roles("pg", &learned, now).await.unwrap();
        store
            .learn_roles("other", &[role("30", "x", RoleClass::OwnLogin)], now)
            .await
            .unwrap();
        let mut expected = learned.clone();
        expected.sort();
        assert_eq!(store.learned_roles("pg").await.unwrap(), expected);
        store.forget_roles("pg", &["20".into()]).await.unwrap();
        assert_eq!(
            store.learned_roles("pg").await.unwrap(),
            vec![role("10", "postgres", RoleClass::Superuser)]
        );
        assert_eq!(store.learned_roles("other").await.unwrap().len(), 1);
    }

    /// What one statement reads for several targets is what the two reads per target give.
    async fn stored_roles_match_the_reads_they_replace(store: Store) {
        let role = |identity: &str, login: &str, class| LearnedRole {
            identity: identity.into(),
            login: login.into(),
            class,
        };
        let now = Utc::now();
        store
            .learn_roles("pg", &[role("10", "postgres", RoleClass::Superuser)], now)
            .await
            .unwrap();
        store
            .learn_roles("other", &[role("30", "x", RoleClass::OwnLogin)], now)
            .await
            .unwrap();
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(l, i)| (l.to_string(), i.to_string()))
                .collect()
        };
        store
            .remember_identities("pg", &pairs(&[("app", "16384"), ("old", "16390")]), now)
            .await
            .unwrap();
        store
            .remember_identities("other", &pairs(&[("app", "5")]), now)
            .await
            .unwrap();
        let targets: Vec<String> = ["pg", "other", "empty"].map(String::from).to_vec();
        let all = store.stored_roles(&targets).await.unwrap();
        assert_eq!(all.len(), 3);
        for target in &targets {
            let roles = &all[target];
            assert_eq!(roles.learned, store.learned_roles(target).await.unwrap());
            let logins = vec!["app".to_owned()];
            let mut read = store.identities(target, &logins).await.unwrap();
            read.sort();
            assert_eq!(roles.identities_of(&logins), read, "{target}");
        }
        assert_eq!(
            all["pg"].identities,
            pairs(&[("app", "16384"), ("old", "16390")])
        );
        assert_eq!(all["empty"], StoredRoles::default());
        // More targets than one statement names: padded and chunked alike.
        let many: Vec<String> = (0..70).map(|i| format!("t{i}")).chain(targets).collect();
        let all = store.stored_roles(&many).await.unwrap();
        assert_eq!(all.len(), 73);
        assert_eq!(all["other"].learned.len(), 1);
    }

    #[tokio::test]
    async fn stored_roles_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        stored_roles_match_the_reads_they_replace(
            Store::connect(&SecretString::from(url)).await.unwrap(),
        )
        .await;
    }

    #[tokio::test]
    async fn stored_roles_on_postgres() {
        let pg = sever_testkit::pg::TestPostgres::start();
        stored_roles_match_the_reads_they_replace(
            Store::connect(&SecretString::from(pg.superuser_url("postgres")))
                .await
                .unwrap(),
        )
        .await;
    }
}
