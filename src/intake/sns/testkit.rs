//! Test fixtures shared by the SNS unit tests: a real RSA key and certificate made with the
//! openssl CLI, a signer, and an [`SnsHttp`] that serves fixed bodies and records requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use url::Url;

use super::*;

pub(super) const CERT_URL: &str =
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem";
pub(super) const SUBSCRIBE_URL: &str = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-1:123456789012:rotations&Token=abc";
pub(super) const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:rotations";

pub(super) fn openssl(dir: &Path, args: &[&str]) {
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
pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
    pub(super) cert_pem: Vec<u8>,
    signatures: AtomicUsize,
}

impl Fixture {
    pub(super) fn new() -> Self {
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

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A certificate for the same key whose validity ended in 2020.
    pub(super) fn expired_cert(&self) -> Vec<u8> {
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
    pub(super) fn sign(&self, mut msg: SnsMessage) -> SnsMessage {
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
pub(super) struct FakeHttp {
    bodies: HashMap<String, Vec<u8>>,
    requests: Mutex<Vec<String>>,
}

impl FakeHttp {
    pub(super) fn new(cert_pem: &[u8]) -> Arc<Self> {
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

    pub(super) fn requests(&self) -> Vec<String> {
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

pub(super) fn verifier(http: &Arc<FakeHttp>) -> SnsVerifier {
    SnsVerifier::new(Arc::clone(http) as Arc<dyn SnsHttp>)
}

pub(super) fn notification(version: &str, subject: Option<&str>) -> SnsMessage {
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

pub(super) fn confirmation(kind: SnsMessageType) -> SnsMessage {
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
