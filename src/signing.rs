//! Standard Webhooks signing: the `whsec_` key format and the HMAC-SHA256 over
//! `"{id}.{timestamp}.{body}"`, shared by the intake (which verifies deliveries) and the
//! outbound notifications (which sign them), so both sides are one implementation.
//!
//! A leaf: it imports no other module of the crate.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The smallest and largest key the specification allows, in bytes.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Why a `whsec_` secret is unusable (never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// It lacks the `whsec_` prefix.
    #[error("must start with whsec_")]
    Prefix,
    /// The part after the prefix is not base64.
    #[error("is not valid base64 after whsec_")]
    Base64,
    /// The key is shorter or longer than the specification allows.
    #[error("must decode to 24 to 64 bytes")]
    Length,
}

impl KeyError {
    /// The reason as a static string, for errors that carry one.
    pub fn reason(self) -> &'static str {
        match self {
            KeyError::Prefix => "must start with whsec_",
            KeyError::Base64 => "is not valid base64 after whsec_",
            KeyError::Length => "must decode to 24 to 64 bytes",
        }
    }
}

/// The key bytes of a `whsec_<base64>` secret, checked against the specification's sizes.
pub fn decode_key(secret: &str) -> Result<Vec<u8>, KeyError> {
    let encoded = secret.strip_prefix("whsec_").ok_or(KeyError::Prefix)?;
    let key = STANDARD.decode(encoded).map_err(|_| KeyError::Base64)?;
    if !KEY_BYTES.contains(&key.len()) {
        return Err(KeyError::Length);
    }
    Ok(key)
}

/// The MAC over `"{id}.{timestamp}.{body}"` with `key`, ready to finish or verify.
fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` value (`v1,<base64>`) of a delivery signed with `key`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(key, id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// Whether any of `candidates` (decoded `v1` signatures) is `key`'s signature of the
/// delivery; compared in constant time.
pub fn matches(key: &[u8], id: &str, timestamp: i64, body: &[u8], candidates: &[Vec<u8>]) -> bool {
    let mac = mac(key, id, timestamp, body);
    candidates
        .iter()
        .any(|sig| mac.clone().verify_slice(sig).is_ok())
}

/// The decoded `v1` signatures of a `webhook-signature` header (space-separated), at most
/// `limit` of them, so a long header cannot buy unbounded work.
pub fn candidates(header: &str, limit: usize) -> Vec<Vec<u8>> {
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .take(limit)
        .filter_map(|s| STANDARD.decode(s).ok())
        .collect()
}

/// Signs a payload the way a Standard Webhooks sender does: the `webhook-signature` value;
/// `None` when `secret` is not `whsec_<base64>`. (Any key length: the CLI's `sign` helper
/// and tests sign with keys sever would refuse.)
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
    Some(signature(&key, id, timestamp, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from the Standard Webhooks specification's reference implementations.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_specification_example_signs_and_matches() {
        assert_eq!(sign(SECRET, ID, TS, BODY).unwrap(), SIG);
        let key = decode_key(SECRET).unwrap();
        assert_eq!(signature(&key, ID, TS, BODY), SIG);
        let found = candidates(&format!("v1,AAAA {SIG} v2,xyz"), 8);
        assert_eq!(found.len(), 2);
        assert!(matches(&key, ID, TS, BODY, &found));
        assert!(!matches(&key, ID, TS + 1, BODY, &found));
        assert!(!matches(&key, ID, TS, b"{}", &found));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert_eq!(decode_key("plain"), Err(KeyError::Prefix));
        assert_eq!(decode_key("whsec_!!!"), Err(KeyError::Base64));
        assert_eq!(decode_key("whsec_AAAA"), Err(KeyError::Length));
        assert_eq!(KeyError::Length.reason(), KeyError::Length.to_string());
    }
}
