//! The one check of a presented secret against configured SHA-256 hashes, in constant time:
//! operator tokens, metrics tokens and EventBridge API keys all go through it; and reading a
//! bearer token from its header.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 hashes of accepted secrets, each with what it stands for (an operator's name, or
/// nothing for an API key).
#[derive(Clone)]
pub struct HashedKeys<T> {
    entries: Vec<(T, [u8; 32])>,
}

impl<T> HashedKeys<T> {
    /// From `(what, hash)` pairs.
    pub fn new(entries: Vec<(T, [u8; 32])>) -> Self {
        Self { entries }
    }

    /// SHA-256 of a secret, as [`HashedKeys::new`] takes it.
    pub fn hash(secret: &[u8]) -> [u8; 32] {
        Sha256::digest(secret).into()
    }

    /// What `presented` stands for, comparing its hash with every entry in constant time
    /// and without stopping early (the last match wins).
    pub fn find(&self, presented: &[u8]) -> Option<&T> {
        let presented = Self::hash(presented);
        let mut found = None;
        for (what, hash) in &self.entries {
            if bool::from(presented.ct_eq(hash)) {
                found = Some(what);
            }
        }
        found
    }

    /// What each entry stands for.
    pub fn names(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(what, _)| what)
    }
}

/// The token of an `Authorization` value `Bearer <token>`, if it carries a non-blank one.
/// The scheme is matched case-insensitively, as RFC 9110 (section 11.1) says schemes are.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    Some(token.trim()).filter(|token| scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
}
