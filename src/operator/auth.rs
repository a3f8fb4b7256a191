//! Operator authentication: bearer tokens checked against configured SHA-256 hashes.
//!
//! Tokens are long random strings (see `sever operator-token`), so a plain SHA-256 is enough
//! to keep the config from holding usable credentials; a slow password hash would only add
//! latency to every incident call.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::OperatorConfig;
use crate::http::Actor;
use crate::http::error::ApiError;
use crate::http::keys::HashedKeys;
pub use crate::http::keys::bearer_token;

/// The configured operators.
#[derive(Clone)]
pub struct Operators {
    keys: HashedKeys<String>,
}

impl std::fmt::Debug for Operators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.names()).finish()
    }
}

/// Hex SHA-256 of a token, as configured in `operators[].token_sha256`.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token (256 bits, URL-safe) and its hash.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("sev_{}", hex::encode(bytes));
    let hash = token_hash(&token);
    (token, hash)
}

impl Operators {
    /// From validated config (hashes are 64 hex characters).
    pub fn new(configured: &[OperatorConfig]) -> Self {
        let entries = configured
            .iter()
            .filter_map(|op| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(op.token_sha256.to_ascii_lowercase(), &mut hash).ok()?;
                Some((op.name.clone(), hash))
            })
            .collect();
        Self {
            keys: HashedKeys::new(entries),
        }
    }

    /// The operator whose token this is, comparing against every hash in constant time.
    pub fn authenticate(&self, token: &str) -> Option<&str> {
        self.keys.find(token.as_bytes()).map(String::as_str)
    }
}

/// An authenticated operator; extracting it refuses bad or missing tokens (recorded as
/// refusals by `anonymous`).
#[derive(Debug, Clone)]
pub struct Operator {
    /// Configured name, recorded as `operator:<name>`.
    pub name: String,
}

impl Operator {
    /// The audit actor.
    pub fn actor(&self) -> Actor {
        Actor::Operator(self.name.clone())
    }
}

impl<S> FromRequestParts<S> for Operator
where
    S: Send + Sync,
    Arc<Operators>: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let refuse = |e: ApiError| (Extension(Actor::Anonymous), e).into_response();
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = header
            .and_then(bearer_token)
            .ok_or_else(|| refuse(ApiError::MissingToken))?;
        match Arc::<Operators>::from_ref(state).authenticate(token) {
            Some(name) => Ok(Operator {
                name: name.to_owned(),
            }),
            None => Err(refuse(ApiError::InvalidToken)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_authenticates_its_operator_only() {
        let (token, hash) = new_token();
        let (_, other) = new_token();
        let ops = Operators::new(&[
            OperatorConfig {
                name: "alice".into(),
                token_sha256: hash.to_uppercase(),
            },
            OperatorConfig {
                name: "bob".into(),
                token_sha256: other,
            },
        ]);
        assert_eq!(ops.authenticate(&token), Some("alice"));
        assert_eq!(ops.authenticate("sev_wrong"), None);
        assert_eq!(
            bearer_token(&format!("Bearer  {token} ")),
            Some(token.as_str())
        );
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token(&format!("Basic {token}")), None);
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("BeArEr abc"), Some("abc"));
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(ops.authenticate(""), None);
        assert!(!format!("{ops:?}").contains(&token_hash(&token)));
    }
}
