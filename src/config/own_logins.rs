//! sever's own PostgreSQL logins may never be mapped to a credential: a revocation of one
//! would be a request to end sever's own connections.

use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;

use super::{Config, ConfigError, Engine};

/// The login a PostgreSQL URL connects as, as sqlx decides it: the URL's user, else
/// `PGUSER`, else the operating-system user. `None` for a URL that is not PostgreSQL's.
pub fn postgres_login(url: &SecretString) -> Option<String> {
    let url = url.expose_secret();
    if !(url.starts_with("postgres:") || url.starts_with("postgresql:")) {
        return None;
    }
    PgConnectOptions::from_str(url)
        .ok()
        .map(|o| o.get_username().to_owned())
}

impl Config {
    /// Refuses a credential mapped to one of sever's own logins on a PostgreSQL target: the
    /// target's own admin login, or the login of a PostgreSQL store, which counts as sever's
    /// own on every PostgreSQL target since the store may share a server with any of them.
    /// Loads the store's and the targets' URLs to learn the names.
    pub fn check_own_logins(&self) -> Result<(), ConfigError> {
        let store_login = postgres_login(&self.store.url.load("store.url")?);
        for (id, credential) in &self.credentials {
            for (i, mapping) in credential.logins.iter().enumerate() {
                let Some(target) = self.targets.get(&mapping.target) else {
                    continue;
                };
                if target.engine != Engine::Postgres {
                    continue;
                }
                let path = format!("credentials.{id}.logins[{i}].login");
                let refuse = |whose: &str| ConfigError::Invalid {
                    path: path.clone(),
                    reason: format!(
                        "{:?} is {whose}, sever's own login on target {:?}, and cannot be \
                         mapped to a credential",
                        mapping.login, mapping.target
                    ),
                };
                if store_login.as_deref() == Some(mapping.login.as_str()) {
                    return Err(refuse("the store's login"));
                }
                let url = target
                    .url
                    .load(&format!("targets.{}.url", mapping.target))?;
                if postgres_login(&url).as_deref() == Some(mapping.login.as_str()) {
                    return Err(refuse("the target's own login"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_comes_from_the_url_first() {
        let login = |url: &str| postgres_login(&SecretString::from(url.to_owned()));
        assert_eq!(
            login("postgres://store:pw@db:5432/sever").as_deref(),
            Some("store")
        );
        assert_eq!(
            login("postgresql://db/sever?user=other").as_deref(),
            Some("other")
        );
        assert_eq!(login("sqlite://sever.db"), None);
        // No user in the URL: PGUSER or the OS user, whichever sqlx picks; never empty.
        assert!(login("postgres://db/sever").is_some_and(|l| !l.is_empty()));
    }
}
