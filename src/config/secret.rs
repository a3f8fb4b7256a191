//! Where secrets come from: environment variables or files, never required inline.

use std::path::PathBuf;

use secrecy::SecretString;
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
    /// Resolves the URL (or, for SQL Server, the ADO.NET connection string). Inline values
    /// carrying a password are refused so credentials stay out of config; each engine checks
    /// the format itself.
    pub fn load(&self, what: &str) -> Result<SecretString, ConfigError> {
        match self {
            UrlSource::Inline(value) => {
                let url_password = url::Url::parse(value)
                    .ok()
                    .is_some_and(|u| u.password().is_some());
                let ado_password = value
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .any(|(key, _)| {
                        matches!(key.trim().to_ascii_lowercase().as_str(), "password" | "pwd")
                    });
                if url_password || ado_password {
                    return Err(ConfigError::Invalid {
                        path: what.to_owned(),
                        reason: "inline connection setting contains a password; use { env = \"…\" } or { file = \"…\" }"
                            .into(),
                    });
                }
                Ok(SecretString::from(value.clone()))
            }
            UrlSource::Secret(secret) => secret.load(what),
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
    use secrecy::ExposeSecret;

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
    fn inline_ado_string_with_password_is_refused() {
        let err = UrlSource::Inline("Server=tcp:db,1433;User Id=sever;Password=hunter2".into())
            .load("targets.x.url")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("password") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(
            UrlSource::Inline("Server=tcp:db,1433;Authentication=ActiveDirectoryMsi".into())
                .load("x")
                .is_ok()
        );
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
