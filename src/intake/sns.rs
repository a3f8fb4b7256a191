//! Amazon SNS HTTPS-subscription messages: parsing, signature verification (AWS's documented
//! algorithm) and subscription confirmation.
//!
//! The signing certificate's chain is deliberately not validated against a trust store: per
//! AWS's guidance, its authenticity comes from fetching it over HTTPS (with the TLS chain
//! checked by the client) from an SNS host, so the URL check below is the trust decision.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use url::{Host, Url};
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
use x509_parser::time::ASN1Time;

/// How long an extracted public key is reused before its certificate is fetched again.
const KEY_TTL: Duration = Duration::from_secs(3600);
/// Certificates remembered at once, so many distinct (valid) URLs cannot grow memory unbounded.
const MAX_CACHED_KEYS: usize = 64;
/// Largest response body read by [`HttpsClient`]; SNS certificates are a few KiB.
const MAX_BODY: usize = 64 * 1024;
/// Whole-request timeout for [`HttpsClient`].
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an SNS message was refused or could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnsError {
    /// The body is not a well-formed SNS message (never echoes the body).
    #[error("malformed SNS message: {0}")]
    Malformed(String),
    /// `SignatureVersion` is neither "1" nor "2".
    #[error("unsupported SNS SignatureVersion {0:?}")]
    UnsupportedSignatureVersion(String),
    /// A certificate or subscribe URL does not point at an SNS host.
    #[error("untrusted SNS URL: {0}")]
    UntrustedUrl(String),
    /// The signing certificate is unusable.
    #[error("SNS signing certificate: {0}")]
    Certificate(String),
    /// The signature does not match the message.
    #[error("SNS signature does not verify")]
    BadSignature,
    /// An HTTPS GET failed.
    #[error("SNS fetch failed: {0}")]
    Fetch(String),
}

/// The `Type` of an SNS message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SnsMessageType {
    /// A published message.
    Notification,
    /// Sent once when the subscription is created; must be confirmed.
    SubscriptionConfirmation,
    /// Sent when the subscription is removed.
    UnsubscribeConfirmation,
}

/// An SNS message as delivered to an HTTPS endpoint (unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

/// Whether `host` is `sns.<region>.amazonaws.com` or `sns.<region>.amazonaws.com.cn`.
fn is_sns_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"));
    region.is_some_and(|r| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// Checks that `raw` is an https URL on an SNS host (no userinfo, default port).
fn check_sns_url(raw: &str, what: &str) -> Result<Url, SnsError> {
    let url = Url::parse(raw).map_err(|e| SnsError::UntrustedUrl(format!("{what}: {e}")))?;
    if url.scheme() != "https" {
        return Err(SnsError::UntrustedUrl(format!(
            "{what}: scheme is not https"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SnsError::UntrustedUrl(format!("{what}: has userinfo")));
    }
    // The url crate normalises an explicit :443 away for https, so any port here is non-443.
    if url.port().is_some() {
        return Err(SnsError::UntrustedUrl(format!("{what}: non-default port")));
    }
    match url.host() {
        Some(Host::Domain(host)) if is_sns_host(host) => Ok(url),
        _ => Err(SnsError::UntrustedUrl(format!(
            "{what}: host is not sns.<region>.amazonaws.com[.cn]"
        ))),
    }
}

/// Checks `SigningCertURL`: an SNS URL whose path ends in `.pem`.
fn check_cert_url(raw: &str) -> Result<Url, SnsError> {
    let url = check_sns_url(raw, "SigningCertURL")?;
    if !url.path().ends_with(".pem") {
        return Err(SnsError::UntrustedUrl(
            "SigningCertURL: path does not end in .pem".into(),
        ));
    }
    Ok(url)
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

/// An RSA public key (RSAPublicKey DER) and how long it may still be used.
struct ExtractedKey {
    der: Vec<u8>,
    remaining: Duration,
}

/// Extracts the RSA public key from a PEM certificate that is currently within its validity.
fn extract_key(pem: &[u8]) -> Result<ExtractedKey, SnsError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| SnsError::Certificate(format!("not PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| SnsError::Certificate(format!("not X.509: {e}")))?;
    let validity = cert.validity();
    let now = ASN1Time::now();
    if !validity.is_valid_at(now) {
        return Err(SnsError::Certificate("outside its validity period".into()));
    }
    let remaining = u64::try_from(validity.not_after.timestamp() - now.timestamp()).unwrap_or(0);
    let spki = cert.public_key();
    if spki.algorithm.algorithm != OID_PKCS1_RSAENCRYPTION {
        return Err(SnsError::Certificate("public key is not RSA".into()));
    }
    Ok(ExtractedKey {
        der: spki.subject_public_key.data.to_vec(),
        remaining: Duration::from_secs(remaining),
    })
}

/// Fetches SNS URLs; injectable so tests never reach the network.
#[async_trait::async_trait]
pub trait SnsHttp: Send + Sync {
    /// GETs an already-validated https SNS URL and returns the body.
    async fn get(&self, url: &Url) -> Result<Vec<u8>, SnsError>;
}

/// The production [`SnsHttp`]: HTTPS only, no redirects, 5 s timeout, 64 KiB body cap.
pub struct HttpsClient {
    client: reqwest::Client,
}

impl HttpsClient {
    /// Builds the client.
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            // A redirect could leave the SNS host that the URL check approved.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .build()
            .expect("reqwest client with static settings builds");
        Self { client }
    }
}

impl Default for HttpsClient {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl SnsHttp for HttpsClient {
    async fn get(&self, url: &Url) -> Result<Vec<u8>, SnsError> {
        let mut response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| SnsError::Fetch(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(SnsError::Fetch(format!("HTTP status {status}")));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(SnsError::Fetch("response body too large".into()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| SnsError::Fetch(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(SnsError::Fetch("response body too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Certificate URL → (RSAPublicKey DER, instant the entry expires).
type KeyCache = HashMap<String, (Arc<Vec<u8>>, Instant)>;

/// Verifies SNS messages, caching each signing certificate's public key.
pub struct SnsVerifier {
    http: Arc<dyn SnsHttp>,
    cache: tokio::sync::Mutex<KeyCache>,
}

impl SnsVerifier {
    /// A verifier that fetches certificates through `http`.
    pub fn new(http: Arc<dyn SnsHttp>) -> Self {
        Self {
            http,
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Parses a raw SNS HTTP body (same as [`parse`]).
    pub fn parse(body: &[u8]) -> Result<SnsMessage, SnsError> {
        parse(body)
    }

    /// Checks the certificate URL, then the message's signature against that certificate.
    pub async fn verify(&self, msg: &SnsMessage) -> Result<(), SnsError> {
        let prepared = prepare(msg)?;
        let key = self.public_key(&prepared.cert_url).await?;
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

    /// The public key for a validated certificate URL, from the cache or freshly fetched.
    async fn public_key(&self, url: &Url) -> Result<Arc<Vec<u8>>, SnsError> {
        let now = Instant::now();
        {
            let cache = self.cache.lock().await;
            if let Some((key, expires)) = cache.get(url.as_str())
                && *expires > now
            {
                return Ok(Arc::clone(key));
            }
        }
        // The lock is not held across the fetch; concurrent misses may fetch twice, harmlessly.
        let pem = self.http.get(url).await?;
        let extracted = extract_key(&pem)?;
        let key = Arc::new(extracted.der);
        // Never reuse a key past its certificate's notAfter.
        let expires = now + KEY_TTL.min(extracted.remaining);
        let mut cache = self.cache.lock().await;
        cache.retain(|_, (_, e)| *e > now);
        if cache.len() >= MAX_CACHED_KEYS
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| k.clone())
        {
            cache.remove(&oldest);
        }
        cache.insert(url.as_str().to_owned(), (Arc::clone(&key), expires));
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem";
    const SUBSCRIBE_URL: &str = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-1:123456789012:rotations&Token=abc";
    const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:rotations";

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A fresh RSA-2048 key with a self-signed certificate, in a tempdir.
    struct Fixture {
        dir: tempfile::TempDir,
        cert_pem: Vec<u8>,
        signatures: AtomicUsize,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            openssl(
                dir.path(),
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    "key.pem",
                    "-out",
                    "cert.pem",
                    "-subj",
                    "/CN=sns-test",
                    "-days",
                    "30",
                ],
            );
            let cert_pem = std::fs::read(dir.path().join("cert.pem")).expect("read cert");
            Self {
                dir,
                cert_pem,
                signatures: AtomicUsize::new(0),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// A certificate for the same key whose validity ended in 2020.
        fn expired_cert(&self) -> Vec<u8> {
            let d = self.dir.path();
            std::fs::write(
                self.path("ca.cnf"),
                "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\n\
                 serial = serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n\
                 [p]\ncommonName = supplied\n",
            )
            .expect("write ca.cnf");
            std::fs::write(self.path("index.txt"), "").expect("write index");
            std::fs::write(self.path("serial"), "01\n").expect("write serial");
            openssl(
                d,
                &[
                    "req",
                    "-new",
                    "-key",
                    "key.pem",
                    "-subj",
                    "/CN=sns-test",
                    "-out",
                    "req.csr",
                ],
            );
            openssl(
                d,
                &[
                    "ca",
                    "-batch",
                    "-config",
                    "ca.cnf",
                    "-selfsign",
                    "-keyfile",
                    "key.pem",
                    "-in",
                    "req.csr",
                    "-out",
                    "expired.pem",
                    "-notext",
                    "-startdate",
                    "20200101000000Z",
                    "-enddate",
                    "20200102000000Z",
                ],
            );
            std::fs::read(self.path("expired.pem")).expect("read expired cert")
        }

        /// Signs `msg`'s string to sign with the digest its SignatureVersion names.
        fn sign(&self, mut msg: SnsMessage) -> SnsMessage {
            let n = self.signatures.fetch_add(1, Ordering::SeqCst);
            let data = format!("data-{n}.txt");
            let sig = format!("sig-{n}.bin");
            std::fs::write(
                self.path(&data),
                msg.string_to_sign().expect("string to sign"),
            )
            .expect("write data");
            let digest = if msg.signature_version == "1" {
                "-sha1"
            } else {
                "-sha256"
            };
            openssl(
                self.dir.path(),
                &["dgst", digest, "-sign", "key.pem", "-out", &sig, &data],
            );
            msg.signature = STANDARD.encode(std::fs::read(self.path(&sig)).expect("read sig"));
            msg
        }
    }

    /// Serves fixed bodies for known URLs, fails for anything else, and records every request.
    struct FakeHttp {
        bodies: HashMap<String, Vec<u8>>,
        requests: Mutex<Vec<String>>,
    }

    impl FakeHttp {
        fn new(cert_pem: &[u8]) -> Arc<Self> {
            let mut bodies = HashMap::new();
            bodies.insert(CERT_URL.to_owned(), cert_pem.to_vec());
            bodies.insert(
                Url::parse(SUBSCRIBE_URL).expect("url").to_string(),
                b"<ConfirmSubscriptionResponse/>".to_vec(),
            );
            Arc::new(Self {
                bodies,
                requests: Mutex::new(Vec::new()),
            })
        }

        fn requests(&self) -> Vec<String> {
            self.requests.lock().expect("lock").clone()
        }
    }

    #[async_trait::async_trait]
    impl SnsHttp for FakeHttp {
        async fn get(&self, url: &Url) -> Result<Vec<u8>, SnsError> {
            self.requests.lock().expect("lock").push(url.to_string());
            self.bodies
                .get(url.as_str())
                .cloned()
                .ok_or_else(|| SnsError::Fetch(format!("unexpected URL {url}")))
        }
    }

    fn verifier(http: &Arc<FakeHttp>) -> SnsVerifier {
        SnsVerifier::new(Arc::clone(http) as Arc<dyn SnsHttp>)
    }

    fn notification(version: &str, subject: Option<&str>) -> SnsMessage {
        SnsMessage {
            message_type: SnsMessageType::Notification,
            message_id: "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324".into(),
            token: None,
            topic_arn: TOPIC.into(),
            subject: subject.map(str::to_owned),
            message: r#"{"secret":"arn:aws:secretsmanager:us-east-1:1:secret:db"}"#.into(),
            timestamp: "2024-05-01T12:00:00.000Z".into(),
            signature_version: version.into(),
            signature: String::new(),
            signing_cert_url: CERT_URL.into(),
            subscribe_url: None,
            unsubscribe_url: Some(
                "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x".into(),
            ),
        }
    }

    fn confirmation(kind: SnsMessageType) -> SnsMessage {
        SnsMessage {
            message_type: kind,
            message_id: "165545c9-2a5c-472c-8df2-7ff2be2b3b1b".into(),
            token: Some("abc".into()),
            topic_arn: TOPIC.into(),
            subject: None,
            message: "You have chosen to subscribe to the topic.".into(),
            timestamp: "2024-05-01T12:00:00.000Z".into(),
            signature_version: "2".into(),
            signature: String::new(),
            signing_cert_url: CERT_URL.into(),
            subscribe_url: Some(SUBSCRIBE_URL.into()),
            unsubscribe_url: None,
        }
    }

    #[test]
    fn string_to_sign_follows_aws_key_order() {
        let msg = notification("1", Some("hi"));
        assert_eq!(
            msg.string_to_sign().unwrap(),
            format!(
                "Message\n{}\nMessageId\n{}\nSubject\nhi\nTimestamp\n{}\nTopicArn\n{TOPIC}\nType\nNotification\n",
                msg.message, msg.message_id, msg.timestamp
            )
        );
        let msg = confirmation(SnsMessageType::SubscriptionConfirmation);
        assert_eq!(
            msg.string_to_sign().unwrap(),
            format!(
                "Message\n{}\nMessageId\n{}\nSubscribeURL\n{SUBSCRIBE_URL}\nTimestamp\n{}\nToken\nabc\nTopicArn\n{TOPIC}\nType\nSubscriptionConfirmation\n",
                msg.message, msg.message_id, msg.timestamp
            )
        );
    }

    #[tokio::test]
    async fn notifications_verify_with_v1_and_v2_with_and_without_subject() {
        let fx = Fixture::new();
        let http = FakeHttp::new(&fx.cert_pem);
        let v = verifier(&http);
        for version in ["1", "2"] {
            for subject in [None, Some("Rotation")] {
                let msg = fx.sign(notification(version, subject));
                v.verify(&msg)
                    .await
                    .unwrap_or_else(|e| panic!("v{version} subject {subject:?}: {e}"));
            }
        }
    }

    #[tokio::test]
    async fn signature_made_with_other_digest_fails() {
        let fx = Fixture::new();
        let http = FakeHttp::new(&fx.cert_pem);
        let mut msg = fx.sign(notification("1", None));
        msg.signature_version = "2".into();
        assert_eq!(
            verifier(&http).verify(&msg).await,
            Err(SnsError::BadSignature)
        );
    }

    #[tokio::test]
    async fn parsed_notification_with_extra_fields_verifies() {
        let fx = Fixture::new();
        let http = FakeHttp::new(&fx.cert_pem);
        let msg = fx.sign(notification("2", Some("Rotation")));
        let body = serde_json::json!({
            "Type": "Notification",
            "MessageId": msg.message_id,
            "TopicArn": msg.topic_arn,
            "Subject": msg.subject,
            "Message": msg.message,
            "Timestamp": msg.timestamp,
            "SignatureVersion": msg.signature_version,
            "Signature": msg.signature,
            "SigningCertURL": msg.signing_cert_url,
            "UnsubscribeURL": msg.unsubscribe_url,
            "MessageAttributes": {"k": {"Type": "String", "Value": "v"}},
        });
        let parsed = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(parsed, msg);
        verifier(&http).verify(&parsed).await.unwrap();
    }

    #[test]
    fn parse_errors_do_not_echo_the_body() {
        let secret = "do-not-log-this-value";
        let body = format!(r#"{{"Type":"Notification","MessageId":"{secret}"}}"#);
        let err = parse(body.as_bytes()).unwrap_err();
        assert!(matches!(err, SnsError::Malformed(_)), "{err}");
        assert!(!err.to_string().contains(secret), "{err}");

        let body = format!(r#"{{"Type":"Notification","Message":["{secret}"]}}"#);
        let err = parse(body.as_bytes()).unwrap_err();
        assert!(!err.to_string().contains(secret), "{err}");

        let body = format!(r#"{{"Type":"{secret}"}}"#);
        let err = parse(body.as_bytes()).unwrap_err();
        assert!(!err.to_string().contains(secret), "{err}");

        assert!(matches!(parse(b"not json"), Err(SnsError::Malformed(_))));
    }

    #[tokio::test]
    async fn subscription_confirmation_verifies_and_confirm_gets_subscribe_url() {
        let fx = Fixture::new();
        let http = FakeHttp::new(&fx.cert_pem);
        let v = verifier(&http);
        let msg = fx.sign(confirmation(SnsMessageType::SubscriptionConfirmation));
        v.verify(&msg).await.unwrap();
        assert_eq!(http.requests(), vec![CERT_URL.to_owned()]);
        v.confirm(&msg).await.unwrap();
        let requests = http.requests();
        assert_eq!(requests.len(), 2, "{requests:?}");
        assert_eq!(
            requests[1],
            Url::parse(SUBSCRIBE_URL).unwrap().to_string(),
            "confirm GETs exactly the SubscribeURL"
        );
    }

    #[tokio::test]
    async fn unsubscribe_confirmation_verifies() {
        let fx = Fixture::new();
        let http = FakeHttp::new(&fx.cert_pem);
        let msg = fx.sign(confirmation(SnsMessageType::UnsubscribeConfirmation));
        verifier(&http).verify(&msg).await.unwrap();
    }

    #[tokio::test]
    async fn confirm_refuses_unsigned_or_wrong_type_or_untrusted_subscribe_url() {
        let fx = Fixture::new();
        let http = FakeHttp::new(&fx.cert_pem);
        let v = verifier(&http);

        // Tampered: fails verification, so the SubscribeURL is never fetched.
        let mut msg = fx.sign(confirmation(SnsMessageType::SubscriptionConfirmation));
        msg.token = Some("other".into());
        assert_eq!(v.confirm(&msg).await, Err(SnsError::BadSignature));
        assert_eq!(http.requests(), vec![CERT_URL.to_owned()]);

        // Validly signed, but the SubscribeURL is off-SNS: refused before any fetch.
        let mut off_sns = confirmation(SnsMessageType::SubscriptionConfirmation);
        off_sns.subscribe_url = Some("https://sns.evil.com/?Action=ConfirmSubscription".into());
        let msg = fx.sign(off_sns);
        assert!(matches!(
            v.confirm(&msg).await,
            Err(SnsError::UntrustedUrl(_))
        ));
        assert_eq!(http.requests().len(), 1);

        let msg = fx.sign(confirmation(SnsMessageType::UnsubscribeConfirmation));
        assert!(matches!(v.confirm(&msg).await, Err(SnsError::Malformed(_))));
        let msg = fx.sign(notification("2", None));
        assert!(matches!(v.confirm(&msg).await, Err(SnsError::Malformed(_))));
        assert_eq!(http.requests().len(), 1);
    }

    #[tokio::test]
    async fn confirmation_without_token_is_malformed() {
        let fx = Fixture::new();
        let http = FakeHttp::new(&fx.cert_pem);
        let mut msg = fx.sign(confirmation(SnsMessageType::SubscriptionConfirmation));
        msg.token = None;
        assert!(matches!(
            verifier(&http).verify(&msg).await,
            Err(SnsError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn tampered_fields_are_bad_signatures() {
        let fx = Fixture::new();
        let http = FakeHttp::new(&fx.cert_pem);
        let v = verifier(&http);
        let good = fx.sign(notification("2", Some("Rotation")));

        let mut msg = good.clone();
        msg.message.push(' ');
        assert_eq!(v.verify(&msg).await, Err(SnsError::BadSignature));

        let mut msg = good.clone();
        msg.topic_arn = "arn:aws:sns:us-east-1:123456789012:other".into();
        assert_eq!(v.verify(&msg).await, Err(SnsError::BadSignature));

        let mut msg = good.clone();
        msg.subject = None;
        assert_eq!(v.verify(&msg).await, Err(SnsError::BadSignature));

        let mut msg = good.clone();
        msg.signature = "!!!".into();
        assert!(matches!(v.verify(&msg).await, Err(SnsError::Malformed(_))));

        v.verify(&good).await.unwrap();
    }

    #[tokio::test]
    async fn untrusted_cert_urls_are_rejected_without_fetching() {
        let fx = Fixture::new();
        let http = FakeHttp::new(&fx.cert_pem);
        let v = verifier(&http);
        for url in [
            "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
            "https://sns.evil.com/SimpleNotificationService-test.pem",
            "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-test.pem",
            "https://x@sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
            "https://x:y@sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
            "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-test.pem",
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.txt",
            "https://sns.us-east-1.amazonaws.com/cert?x=.pem",
            "https://evilsns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
            "https://sns..amazonaws.com/SimpleNotificationService-test.pem",
            "https://sns.us_east.amazonaws.com/SimpleNotificationService-test.pem",
            "https://sns.us-east-1.evil.amazonaws.com.cn.evil/x.pem",
            "https://sns.us-east-1.amazonaws.com./SimpleNotificationService-test.pem",
            "https://1.2.3.4/SimpleNotificationService-test.pem",
            "not a url",
        ] {
            let mut msg = notification("2", None);
            msg.signing_cert_url = url.into();
            let msg = fx.sign(msg);
            let err = v.verify(&msg).await.unwrap_err();
            assert!(matches!(err, SnsError::UntrustedUrl(_)), "{url}: {err}");
        }
        assert!(http.requests().is_empty(), "{:?}", http.requests());
    }

    #[test]
    fn sns_host_rule() {
        for ok in [
            "sns.us-east-1.amazonaws.com",
            "sns.cn-north-1.amazonaws.com.cn",
            "sns.us-gov-west-1.amazonaws.com",
        ] {
            assert!(is_sns_host(ok), "{ok}");
        }
        for bad in [
            "sns.amazonaws.com",
            "sns..amazonaws.com",
            "sns.us-east-1.amazonaws.com.evil.com",
            "sns.US-EAST-1.amazonaws.com",
            "sns.a.b.amazonaws.com",
            "xsns.us-east-1.amazonaws.com",
            "sqs.us-east-1.amazonaws.com",
        ] {
            assert!(!is_sns_host(bad), "{bad}");
        }
        // The url crate lowercases hosts, and an explicit :443 is the default port.
        check_cert_url("https://SNS.US-EAST-1.amazonaws.com:443/SimpleNotificationService-x.pem")
            .unwrap();
        check_sns_url(SUBSCRIBE_URL, "SubscribeURL").unwrap();
    }

    #[tokio::test]
    async fn unsupported_signature_version_is_rejected() {
        let fx = Fixture::new();
        let http = FakeHttp::new(&fx.cert_pem);
        let mut msg = fx.sign(notification("2", None));
        msg.signature_version = "3".into();
        assert_eq!(
            verifier(&http).verify(&msg).await,
            Err(SnsError::UnsupportedSignatureVersion("3".into()))
        );
        assert!(http.requests().is_empty());
    }

    #[tokio::test]
    async fn certificate_is_fetched_once_and_cached() {
        let fx = Fixture::new();
        let http = FakeHttp::new(&fx.cert_pem);
        let v = verifier(&http);
        v.verify(&fx.sign(notification("1", None))).await.unwrap();
        v.verify(&fx.sign(notification("2", Some("s"))))
            .await
            .unwrap();
        assert_eq!(http.requests(), vec![CERT_URL.to_owned()]);
    }

    #[tokio::test]
    async fn expired_certificate_is_rejected() {
        let fx = Fixture::new();
        let http = FakeHttp::new(&fx.expired_cert());
        let msg = fx.sign(notification("2", None));
        let err = verifier(&http).verify(&msg).await.unwrap_err();
        assert!(
            matches!(&err, SnsError::Certificate(m) if m.contains("validity")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn non_rsa_and_garbage_certificates_are_rejected() {
        let fx = Fixture::new();
        openssl(
            fx.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ec-key.pem",
                "-out",
                "ec-cert.pem",
                "-subj",
                "/CN=ec",
                "-days",
                "30",
            ],
        );
        let ec = std::fs::read(fx.path("ec-cert.pem")).unwrap();
        let msg = fx.sign(notification("2", None));
        for (pem, want) in [
            (ec, "not RSA"),
            (b"hello".to_vec(), "not PEM"),
            (
                b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n".to_vec(),
                "not X.509",
            ),
        ] {
            let http = FakeHttp::new(&pem);
            let err = verifier(&http).verify(&msg).await.unwrap_err();
            assert!(
                matches!(&err, SnsError::Certificate(m) if m.contains(want)),
                "{want}: {err}"
            );
        }
    }
}
