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

impl Store {
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
        let rows =
            sqlx::query("SELECT identity, login, class FROM learned_roles WHERE target = $1")
                .bind(target)
                .fetch_all(&self.pool)
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
}
