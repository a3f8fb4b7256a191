//! Standard Webhooks verification: HMAC-SHA256 over `id.timestamp.body`, on the raw bytes,
//! before anything is parsed.

use std::time::Duration;

use axum::http::HeaderMap;
use secrecy::{ExposeSecret, SecretSlice, SecretString};

/// Longest `webhook-id` accepted; ids are stored for de-duplication.
const MAX_ID_LEN: usize = 256;
/// Signatures examined per request, so a long header cannot buy unbounded work.
const MAX_SIGNATURES: usize = 8;

use crate::http::error::WebhookError;
use crate::signing;

/// Signs a payload the way a Standard Webhooks sender does (kept here for the CLI's helper
/// and the tests that sign deliveries); the one implementation is [`crate::signing`].
pub use crate::signing::sign;

/// A signing-secret problem found at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhooks.secrets[{index}]: {reason}")]
pub struct SecretError {
    /// Position in `webhooks.secrets`.
    pub index: usize,
    /// What is wrong (never the value).
    pub reason: &'static str,
}

/// A delivery whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The sender's `webhook-id`, used for de-duplication.
    pub id: String,
    /// The sender's `webhook-timestamp`.
    pub timestamp: i64,
}

/// Verifies deliveries against every configured secret.
pub struct Verifier {
    keys: Vec<SecretSlice<u8>>,
    tolerance: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Verifier {
    /// Decodes `whsec_<base64>` secrets; the spec's keys are 24 to 64 bytes.
    pub fn new(secrets: &[SecretString], tolerance: Duration) -> Result<Self, SecretError> {
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(index, secret)| {
                let key = signing::decode_key(secret.expose_secret()).map_err(|e| SecretError {
                    index,
                    reason: e.reason(),
                })?;
                Ok(SecretSlice::from(key))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { keys, tolerance })
    }

    /// Checks headers, timestamp and signature of a delivery received at `now` (unix seconds).
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, WebhookError> {
        let id = header(headers, "webhook-id")?;
        if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(WebhookError::MalformedHeader("webhook-id"));
        }
        let timestamp: i64 = header(headers, "webhook-timestamp")?
            .parse()
            .map_err(|_| WebhookError::MalformedHeader("webhook-timestamp"))?;
        let signatures = header(headers, "webhook-signature")?;
        let tolerance = self.tolerance.as_secs();
        if now.abs_diff(timestamp) > tolerance {
            return Err(WebhookError::Timestamp(tolerance));
        }
        let candidates = signing::candidates(signatures, MAX_SIGNATURES);
        if candidates.is_empty() {
            return Err(WebhookError::MalformedHeader("webhook-signature"));
        }
        for key in &self.keys {
            if signing::matches(key.expose_secret(), id, timestamp, body, &candidates) {
                return Ok(Verified {
                    id: id.to_owned(),
                    timestamp,
                });
            }
        }
        Err(WebhookError::Signature)
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, WebhookError> {
    headers
        .get(name)
        .ok_or(WebhookError::MissingHeader(name))?
        .to_str()
        .map_err(|_| WebhookError::MalformedHeader(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    // The example from the Standard Webhooks specification's reference implementations.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn verifier(secrets: &[&str]) -> Verifier {
        let secrets: Vec<SecretString> = secrets.iter().map(|s| SecretString::from(*s)).collect();
        Verifier::new(&secrets, Duration::from_secs(300)).unwrap()
    }

    fn headers(id: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        h.insert(
            "webhook-timestamp",
            HeaderValue::from_str(&ts.to_string()).unwrap(),
        );
        h.insert("webhook-signature", HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn the_specification_example_verifies() {
        assert_eq!(sign(SECRET, ID, TS, BODY).unwrap(), SIG);
        let v = verifier(&[SECRET]);
        let ok = v.verify(&headers(ID, TS, SIG), BODY, TS).unwrap();
        assert_eq!(ok.id, ID);
    }

    #[test]
    fn any_configured_secret_and_any_listed_signature_verifies() {
        let other = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let v = verifier(&[other, SECRET]);
        let both = format!("v1,AAAA {SIG}");
        assert!(v.verify(&headers(ID, TS, &both), BODY, TS).is_ok());
    }

    #[test]
    fn tampering_is_refused() {
        let v = verifier(&[SECRET]);
        let err = |h: HeaderMap, body: &[u8]| v.verify(&h, body, TS).unwrap_err();
        assert_eq!(
            err(headers(ID, TS, SIG), b"{\"test\": 1}"),
            WebhookError::Signature
        );
        assert_eq!(
            err(headers("msg_other", TS, SIG), BODY),
            WebhookError::Signature
        );
        assert_eq!(
            err(headers(ID, TS, "v1,AAAA"), BODY),
            WebhookError::Signature
        );
        assert_eq!(
            err(headers(ID, TS, "v2,abc"), BODY),
            WebhookError::MalformedHeader("webhook-signature")
        );
        let other = verifier(&["whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]);
        assert!(other.verify(&headers(ID, TS, SIG), BODY, TS).is_err());
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let v = verifier(&[SECRET]);
        assert_eq!(
            v.verify(&headers(ID, TS, SIG), BODY, TS + 301).unwrap_err(),
            WebhookError::Timestamp(300)
        );
        assert_eq!(
            v.verify(&headers(ID, TS, SIG), BODY, TS - 301).unwrap_err(),
            WebhookError::Timestamp(300)
        );
        assert!(v.verify(&headers(ID, TS, SIG), BODY, TS + 299).is_ok());
    }

    #[test]
    fn missing_headers_are_named() {
        let v = verifier(&[SECRET]);
        let mut h = headers(ID, TS, SIG);
        h.remove("webhook-timestamp");
        assert_eq!(
            v.verify(&h, BODY, TS).unwrap_err(),
            WebhookError::MissingHeader("webhook-timestamp")
        );
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        let bad = |s: &str| {
            Verifier::new(&[SecretString::from(s.to_owned())], Duration::from_secs(1)).unwrap_err()
        };
        assert_eq!(bad("plainsecret").reason, "must start with whsec_");
        assert_eq!(bad("whsec_!!!").reason, "is not valid base64 after whsec_");
        assert_eq!(bad("whsec_AAAA").reason, "must decode to 24 to 64 bytes");
    }
}
