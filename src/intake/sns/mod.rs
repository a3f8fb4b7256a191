//! Amazon SNS HTTPS-subscription messages: parsing, signature verification (AWS's documented
//! algorithm) and subscription confirmation.
//!
//! The signing certificate's chain is deliberately not validated against a trust store: per
//! AWS's guidance, its authenticity comes from fetching it over HTTPS (with the TLS chain
//! checked by the client) from an SNS host, so the URL check in [`urls`] is the trust decision.
//! [`cert`] fetches and caches certificates; [`http`] is the HTTPS client.

mod cert;
mod http;
mod urls;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use url::Url;

use self::cert::{Certificates, extract_key};
pub use self::cert::{FAILURE_TTL, MAX_FETCHES, PERMIT_WAIT};
pub use self::http::{HttpsClient, SnsHttp};
use self::urls::{check_cert_url, check_sns_url};

use crate::http::error::SnsError;

/// The `Type` of an SNS message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
pub enum SnsMessageType {
    /// A published message.
    Notification,
    /// Sent once when the subscription is created; must be confirmed.
    SubscriptionConfirmation,
    /// Sent when the subscription is removed.
    UnsubscribeConfirmation,
}

/// An SNS message as delivered to an HTTPS endpoint (unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SnsMessage {
    /// `Type`: which kind of message this is.
    #[serde(rename = "Type")]
    pub message_type: SnsMessageType,
    /// `MessageId`: unique per published message.
    pub message_id: String,
    /// `Token`: present on confirmation messages.
    #[serde(default)]
    pub token: Option<String>,
    /// `TopicArn`: the topic the message came from.
    pub topic_arn: String,
    /// `Subject`: optional, Notification only.
    #[serde(default)]
    pub subject: Option<String>,
    /// `Message`: the payload.
    pub message: String,
    /// `Timestamp`: when SNS published it (ISO 8601, as sent).
    pub timestamp: String,
    /// `SignatureVersion`: "1" (SHA-1) or "2" (SHA-256).
    pub signature_version: String,
    /// `Signature`: base64 RSA PKCS#1 v1.5 signature.
    pub signature: String,
    /// `SigningCertURL`: where the signing certificate is published.
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    /// `SubscribeURL`: GET it to confirm (confirmation messages).
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
    /// `UnsubscribeURL`: Notification only.
    #[serde(rename = "UnsubscribeURL", default)]
    pub unsubscribe_url: Option<String>,
}

/// Parses a raw SNS HTTP body.
pub fn parse(body: &[u8]) -> Result<SnsMessage, SnsError> {
    serde_json::from_slice(body).map_err(|e| {
        // serde's messages can quote field values; only "missing field `X`" is known to be
        // value-free, everything else is reduced to its position.
        let text = e.to_string();
        if text.starts_with("missing field") {
            SnsError::Malformed(text)
        } else {
            let kind = match e.classify() {
                serde_json::error::Category::Io => "I/O",
                serde_json::error::Category::Syntax => "JSON syntax",
                serde_json::error::Category::Data => "unexpected field type or value",
                serde_json::error::Category::Eof => "truncated JSON",
            };
            SnsError::Malformed(format!("{kind} at line {} column {}", e.line(), e.column()))
        }
    })
}

impl SnsMessage {
    /// Builds AWS's canonical string to sign for this message's type.
    pub fn string_to_sign(&self) -> Result<String, SnsError> {
        fn required<'a>(v: &'a Option<String>, key: &str) -> Result<&'a str, SnsError> {
            v.as_deref()
                .ok_or_else(|| SnsError::Malformed(format!("missing field `{key}`")))
        }
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(7);
        match self.message_type {
            SnsMessageType::Notification => {
                pairs.push(("Message", &self.message));
                pairs.push(("MessageId", &self.message_id));
                if let Some(subject) = &self.subject {
                    pairs.push(("Subject", subject));
                }
                pairs.push(("Timestamp", &self.timestamp));
                pairs.push(("TopicArn", &self.topic_arn));
                pairs.push(("Type", "Notification"));
            }
            SnsMessageType::SubscriptionConfirmation | SnsMessageType::UnsubscribeConfirmation => {
                pairs.push(("Message", &self.message));
                pairs.push(("MessageId", &self.message_id));
                pairs.push((
                    "SubscribeURL",
                    required(&self.subscribe_url, "SubscribeURL")?,
                ));
                pairs.push(("Timestamp", &self.timestamp));
                pairs.push(("Token", required(&self.token, "Token")?));
                pairs.push(("TopicArn", &self.topic_arn));
                pairs.push((
                    "Type",
                    if self.message_type == SnsMessageType::SubscriptionConfirmation {
                        "SubscriptionConfirmation"
                    } else {
                        "UnsubscribeConfirmation"
                    },
                ));
            }
        }
        let mut out = String::new();
        for (key, value) in pairs {
            out.push_str(key);
            out.push('\n');
            out.push_str(value);
            out.push('\n');
        }
        Ok(out)
    }
}

/// What checking a message's signature needs from the message alone.
struct Prepared {
    algorithm: &'static dyn signature::VerificationAlgorithm,
    cert_url: Url,
    signed: String,
    signature: Vec<u8>,
}

impl Prepared {
    /// Checks the signature with an RSAPublicKey (DER).
    fn check(&self, key: &[u8]) -> Result<(), SnsError> {
        UnparsedPublicKey::new(self.algorithm, key)
            .verify(self.signed.as_bytes(), &self.signature)
            .map_err(|_| SnsError::BadSignature)
    }
}

/// Picks the algorithm, checks the certificate URL, and builds the string to sign.
fn prepare(msg: &SnsMessage) -> Result<Prepared, SnsError> {
    let algorithm: &'static dyn signature::VerificationAlgorithm =
        match msg.signature_version.as_str() {
            "1" => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "2" => &signature::RSA_PKCS1_2048_8192_SHA256,
            other => {
                let shown: String = other.chars().take(16).collect();
                return Err(SnsError::UnsupportedSignatureVersion(shown));
            }
        };
    let cert_url = check_cert_url(&msg.signing_cert_url)?;
    let signed = msg.string_to_sign()?;
    let signature = STANDARD
        .decode(msg.signature.trim())
        .map_err(|_| SnsError::Malformed("Signature is not base64".into()))?;
    Ok(Prepared {
        algorithm,
        cert_url,
        signed,
        signature,
    })
}

/// Checks a message's signature against a certificate at hand instead of fetching
/// `SigningCertURL` (which must still be an SNS URL); the fuzz targets' way in.
pub fn verify_with_certificate(msg: &SnsMessage, cert_pem: &[u8]) -> Result<(), SnsError> {
    let prepared = prepare(msg)?;
    prepared.check(&extract_key(cert_pem)?.der)
}

/// Verifies SNS messages, caching each signing certificate's public key.
pub struct SnsVerifier {
    http: Arc<dyn SnsHttp>,
    certificates: Certificates,
}

impl SnsVerifier {
    /// A verifier that fetches certificates (and confirms subscriptions) through `http`.
    pub fn new(http: Arc<dyn SnsHttp>) -> Self {
        Self {
            certificates: Certificates::new(Arc::clone(&http)),
            http,
        }
    }

    /// Parses a raw SNS HTTP body (same as [`parse`]).
    pub fn parse(body: &[u8]) -> Result<SnsMessage, SnsError> {
        parse(body)
    }

    /// Checks the certificate URL, then the message's signature against that certificate.
    pub async fn verify(&self, msg: &SnsMessage) -> Result<(), SnsError> {
        let prepared = prepare(msg)?;
        let key = self.certificates.public_key(&prepared.cert_url).await?;
        prepared.check(&key)
    }

    /// Verifies a SubscriptionConfirmation, then GETs its `SubscribeURL` (which confirms it).
    pub async fn confirm(&self, msg: &SnsMessage) -> Result<(), SnsError> {
        if msg.message_type != SnsMessageType::SubscriptionConfirmation {
            return Err(SnsError::Malformed("not a SubscriptionConfirmation".into()));
        }
        let raw = msg
            .subscribe_url
            .as_deref()
            .ok_or_else(|| SnsError::Malformed("missing field `SubscribeURL`".into()))?;
        let url = check_sns_url(raw, "SubscribeURL")?;
        // Re-verifying is cheap (the key is cached) and makes an unverified confirm impossible.
        self.verify(msg).await?;
        self.http.get(&url).await.map(drop)
    }
}
