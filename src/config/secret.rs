//! Where secrets come from: environment variables or files, never required inline.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::ConfigError;

/// A reference to a secret kept outside the config file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretRef {
    /// Read from this environment variable.
    Env(String),
    /// Read from this file (trailing newline trimmed), e.g. a mounted Kubernetes secret.
    File(PathBuf),
}

impl SecretRef {
    /// Reads the secret; the error names the source, never the value.
    pub fn load(&self, what: &str) -> Result<SecretString, ConfigError> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name).map_err(|_| ConfigError::Secret {
                what: what.to_owned(),
                source_name: format!("environment variable {name}"),
                reason: "not set or not valid UTF-8".into(),
            })?,
            SecretRef::File(path) => {
                std::fs::read_to_string(path).map_err(|e| ConfigError::Secret {
                    what: what.to_owned(),
                    source_name: format!("file {}", path.display()),
                    reason: e.kind().to_string(),
                })?
            }
        };
        let value = value.trim_end_matches(['\r', '\n']).to_owned();
        if value.is_empty() {
            return Err(ConfigError::Secret {
                what: what.to_owned(),
                source_name: self.describe(),
                reason: "empty".into(),
            });
        }
        Ok(SecretString::from(value))
    }

    /// Where the secret comes from, for `check-config` and error messages.
    pub fn describe(&self) -> String {
        match self {
            SecretRef::Env(name) => format!("env:{name}"),
            SecretRef::File(path) => format!("file:{}", path.display()),
        }
    }
}

/// A database URL: inline when it carries no password, otherwise from a [`SecretRef`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum UrlSource {
    /// Written in the config file; rejected at validation if it contains a password.
    Inline(String),
    /// Kept in the environment or a file.
    Secret(SecretRef),
}

impl UrlSource {
    /// Resolves the URL. Inline URLs with a password are refused so credentials stay out of config.
    pub fn load(&self, what: &str) -> Result<SecretString, ConfigError> {
        match self {
            UrlSource::Inline(url) => {
                let parsed = url::Url::parse(url).map_err(|e| ConfigError::Invalid {
                    path: what.to_owned(),
                    reason: format!("not a URL: {e}"),
                })?;
                if parsed.password().is_some() {
                    return Err(ConfigError::Invalid {
                        path: what.to_owned(),
                        reason: "inline URL contains a password; use { env = \"…\" } or { file = \"…\" }"
                            .into(),
                    });
                }
                Ok(SecretString::from(url.clone()))
            }
            UrlSource::Secret(secret) => {
                let value = secret.load(what)?;
                url::Url::parse(value.expose_secret()).map_err(|_| ConfigError::Invalid {
                    path: what.to_owned(),
                    // Never echo the value: it holds a password.
                    reason: format!("{} does not hold a valid URL", secret.describe()),
                })?;
                Ok(value)
            }
        }
    }

    /// A printable form: inline URLs as written, secret ones by their source only.
    pub fn describe(&self) -> String {
        match self {
            UrlSource::Inline(url) => url.clone(),
            UrlSource::Secret(secret) => format!("<redacted, {}>", secret.describe()),
        }
    }
}

/// Prints a URL with any password replaced, for logs and `check-config`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("REDACTED"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_url_with_password_is_refused() {
        let err = UrlSource::Inline("postgres://u:hunter2@h/db".into())
            .load("targets.x.url")
            .unwrap_err()
            .to_string();
        assert!(err.contains("password"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn inline_url_without_password_is_accepted() {
        let url = UrlSource::Inline("postgres://u@h/db".into())
            .load("x")
            .unwrap();
        assert_eq!(url.expose_secret(), "postgres://u@h/db");
    }

    #[test]
    fn file_secret_is_trimmed_and_empty_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "abc\n").unwrap();
        let value = SecretRef::File(path.clone()).load("x").unwrap();
        assert_eq!(value.expose_secret(), "abc");
        std::fs::write(&path, "\n").unwrap();
        assert!(SecretRef::File(path).load("x").is_err());
    }

    #[test]
    fn redact_url_hides_password() {
        let shown = redact_url("postgres://u:hunter2@h:5432/db");
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("REDACTED"));
    }
}
