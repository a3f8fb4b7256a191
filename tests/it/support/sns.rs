//! SNS test fixture: a real RSA key and certificate (made with the openssl CLI) that signs
//! SNS messages the way SNS does, and an `SnsHttp` that serves that certificate for one SNS
//! URL, fails every other certificate URL after [`FAIL_AFTER`], records every GET and counts
//! how many certificate GETs run at once, so no test reaches AWS.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sever::http::error::SnsError;
use sever::intake::sns::{SnsHttp, parse};

/// Where the fixture pretends SNS publishes its certificate.
pub const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem";

/// How long a GET of any other certificate URL takes before it fails: long enough for
/// concurrent fetches to overlap, so their number can be counted.
pub const FAIL_AFTER: Duration = Duration::from_millis(100);

pub struct TestSns {
    dir: tempfile::TempDir,
    cert: Vec<u8>,
    requested: Mutex<Vec<String>>,
    /// Every certificate URL fetched, in order.
    fetched: Mutex<Vec<String>>,
    /// Certificate GETs running now, and the most ever at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Counts a certificate GET as running until dropped.
struct Running<'a>(&'a TestSns);

impl<'a> Running<'a> {
    fn start(sns: &'a TestSns) -> Self {
        let now = sns.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        sns.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(sns)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Now, in SNS's format.
fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestSns {
    pub fn new() -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
            "-days",
            "2",
            "-subj",
            "/CN=sns.amazonaws.com",
        ]);
        let cert = std::fs::read(cert).unwrap();
        Arc::new(Self {
            dir,
            cert,
            requested: Mutex::new(Vec::new()),
            fetched: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Adds `SignatureVersion` 2, `SigningCertURL` and a real `Signature` to `message`.
    pub fn sign(&self, message: Value) -> Vec<u8> {
        self.sign_for(message, CERT_URL)
    }

    /// Like [`TestSns::sign`], but naming `cert_url` as the `SigningCertURL`.
    pub fn sign_for(&self, mut message: Value, cert_url: &str) -> Vec<u8> {
        message["SignatureVersion"] = json!("2");
        message["SigningCertURL"] = json!(cert_url);
        message["Signature"] = json!("");
        let text = parse(&serde_json::to_vec(&message).unwrap())
            .unwrap()
            .string_to_sign()
            .unwrap();
        let input = self.dir.path().join("to-sign");
        let output = self.dir.path().join("signature");
        std::fs::write(&input, text).unwrap();
        openssl(&[
            "dgst",
            "-sha256",
            "-sign",
            self.key().to_str().unwrap(),
            "-out",
            output.to_str().unwrap(),
            input.to_str().unwrap(),
        ]);
        let signature = std::fs::read(output).unwrap();
        message["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(signature));
        serde_json::to_vec(&message).unwrap()
    }

    /// A signed Notification sent at `timestamp` (RFC 3339).
    pub fn notification_at(
        &self,
        topic: &str,
        message_id: &str,
        event: &Value,
        timestamp: &str,
    ) -> Vec<u8> {
        self.sign(json!({
            "Type": "Notification", "MessageId": message_id, "TopicArn": topic,
            "Message": event.to_string(), "Timestamp": timestamp,
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        }))
    }

    /// A signed Notification carrying `event` (an EventBridge event) from `topic`.
    pub fn notification(&self, topic: &str, message_id: &str, event: &Value) -> Vec<u8> {
        self.sign(json!({
            "Type": "Notification", "MessageId": message_id, "TopicArn": topic,
            "Message": event.to_string(), "Timestamp": timestamp(),
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        }))
    }

    /// A signed SubscriptionConfirmation from `topic`.
    pub fn confirmation(&self, topic: &str, token: &str) -> Vec<u8> {
        self.sign(json!({
            "Type": "SubscriptionConfirmation", "MessageId": format!("confirm-{token}"),
            "Token": token, "TopicArn": topic, "Message": "You have chosen to subscribe…",
            "SubscribeURL": format!("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token={token}"),
            "Timestamp": timestamp(),
        }))
    }

    /// A Notification from `topic` whose `SigningCertURL` is `cert_url` (any other than
    /// [`CERT_URL`] fails to fetch, so its signature is never checked).
    pub fn notification_via(&self, topic: &str, message_id: &str, cert_url: &str) -> Vec<u8> {
        self.sign_for(
            json!({
                "Type": "Notification", "MessageId": message_id, "TopicArn": topic,
                "Message": "{}", "Timestamp": timestamp(),
            }),
            cert_url,
        )
    }

    /// Every URL other than the certificate that sever fetched.
    pub fn confirmations(&self) -> Vec<String> {
        self.requested.lock().unwrap().clone()
    }

    /// Every certificate URL sever fetched, in order.
    pub fn fetched(&self) -> Vec<String> {
        self.fetched.lock().unwrap().clone()
    }

    /// The most certificate GETs that ever ran at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl SnsHttp for TestSns {
    async fn get(&self, url: &url::Url) -> Result<Vec<u8>, SnsError> {
        if url.path().ends_with(".pem") {
            self.fetched.lock().unwrap().push(url.to_string());
            let _running = Running::start(self);
            if url.as_str() == CERT_URL {
                return Ok(self.cert.clone());
            }
            tokio::time::sleep(FAIL_AFTER).await;
            return Err(SnsError::Fetch("HTTP status 404 Not Found".into()));
        }
        if url
            .query()
            .is_some_and(|q| q.contains("Action=ConfirmSubscription"))
        {
            self.requested.lock().unwrap().push(url.to_string());
            return Ok(b"<ConfirmSubscriptionResponse/>".to_vec());
        }
        Err(SnsError::Fetch(format!("unexpected URL in test: {url}")))
    }
}
