//! `[[operators]]`: who may call the operator API, by name and token hash. Uses only `config`'s
//! own types.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// An operator: a name for the audit trail and the SHA-256 of their bearer token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Recorded as the actor in audit records.
    pub name: String,
    /// Hex SHA-256 of the token (`sever operator-token` makes one).
    pub token_sha256: String,
}

/// Checks the operators' names and token hashes, each unique.
pub(super) fn validate(operators: &[OperatorConfig]) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    for (i, op) in operators.iter().enumerate() {
        let path = format!("operators[{i}]");
        if op.name.trim().is_empty() || op.name.len() > 128 {
            return Err(invalid(
                format!("{path}.name"),
                "must be 1 to 128 characters",
            ));
        }
        if !names.insert(op.name.as_str()) {
            return Err(invalid(format!("{path}.name"), "duplicate operator name"));
        }
        let hash = token_hash(&format!("{path}.token_sha256"), &op.token_sha256)?;
        if !hashes.insert(hash) {
            return Err(invalid(
                format!("{path}.token_sha256"),
                "the same token is configured for two operators",
            ));
        }
    }
    Ok(())
}

/// A configured token hash (`operators[].token_sha256`, `metrics.tokens_sha256[]`) checked
/// and lowercased: 64 hex characters, as `sever operator-token` prints.
pub(super) fn token_hash(path: &str, hash: &str) -> Result<String, ConfigError> {
    let hash = hash.to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            path.to_owned(),
            "must be 64 hex characters (run `sever operator-token`)",
        ));
    }
    Ok(hash)
}
