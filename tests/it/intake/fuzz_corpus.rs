//! Feeds every committed fuzz seed (`fuzz/seeds/<target>/`) to the function its fuzz target
//! calls, on the stable toolchain, so the corpus is exercised without nightly or cargo-fuzz.
//!
//! Seed names say what must happen: `ok-…` is accepted; `err-<code>-…` is refused with that
//! error code (the API's `error.code`); any other name (a minimised crash kept as a
//! regression) must only not panic. `write_seed_corpus` (ignored) writes the `ok-`/`err-`
//! seeds and the SNS certificate anew.

use std::path::{Path, PathBuf};

use sever::http::error::ApiError;
use sever::intake::fuzz;

const TARGETS: [&str; 7] = [
    "webhook",
    "generic_event",
    "aws_hook",
    "eventbridge",
    "sns",
    "vault_event",
    "operator_token",
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn sns_cert() -> Vec<u8> {
    std::fs::read(fuzz_dir().join("fixtures/sns-signing-cert.pem")).unwrap()
}

/// Every seed of `target`, by file name, sorted.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    seeds
}

/// The API error code of a refusal.
fn code(e: impl Into<ApiError>) -> String {
    e.into().status_and_code().1.to_owned()
}

/// Runs every seed of `target` through `run`, which returns what an accepted input gave (as
/// text, for `accepted` to check) or the refusal's code.
fn check(
    target: &str,
    run: impl Fn(&[u8]) -> Result<String, String>,
    accepted: impl Fn(&str, &str),
) {
    let seeds = seeds(target);
    assert!(
        seeds.iter().any(|(n, _)| n.starts_with("ok-"))
            && seeds.iter().any(|(n, _)| n.starts_with("err-")),
        "{target} needs accepted and refused seeds"
    );
    for (name, data) in &seeds {
        let outcome = run(data);
        if name.starts_with("ok-") {
            let value = outcome.unwrap_or_else(|e| panic!("{target}/{name} was refused: {e}"));
            accepted(name, &value);
        } else if let Some(rest) = name.strip_prefix("err-") {
            let e = outcome.expect_err(&format!("{target}/{name} was accepted"));
            assert!(
                rest.starts_with(&format!("{e}-")),
                "{target}/{name} was refused with {e}"
            );
        }
    }
}

#[test]
fn every_seed_is_accepted_or_refused_as_its_name_says() {
    check(
        "webhook",
        |d| fuzz::webhook(d).map(|v| v.id).map_err(code),
        |name, id| {
            // The id verified is the one the seed sends.
            let seed = &seeds("webhook")
                .into_iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1;
            let (headers, _) = fuzz::split_request(seed);
            assert_eq!(headers["webhook-id"], id);
        },
    );
    check(
        "generic_event",
        |d| {
            fuzz::generic_event(d)
                .map(|plan| plan.steps[0].logins.join(","))
                .map_err(code)
        },
        |name, logins| assert_eq!(logins, "orders_app", "{name}"),
    );
    check(
        "aws_hook",
        |d| fuzz::aws_hook(d).map_err(code),
        |name, step| assert!(name.contains(&step.to_ascii_lowercase()), "{name}: {step}"),
    );
    check(
        "eventbridge",
        |d| {
            fuzz::eventbridge(d)
                .map(|secret| secret.unwrap_or_else(|| "ignored".into()))
                .map_err(code)
        },
        |name, secret| {
            if name.starts_with("ok-ignored-") {
                assert_eq!(secret, "ignored", "{name}");
            } else {
                assert!(secret.contains("prod/orders"), "{name}: {secret}");
            }
        },
    );
    let cert = sns_cert();
    check(
        "sns",
        |d| {
            fuzz::sns(d, &cert)
                .map(|m| m.topic_arn)
                .map_err(|e| code(ApiError::Sns(e)))
        },
        |name, topic| assert_eq!(topic, TOPIC, "{name}"),
    );
    check(
        "vault_event",
        |d| fuzz::vault_event(d).map(|e| e.event_type).map_err(code),
        |name, event_type| {
            let flat = event_type.replace('/', "-");
            assert!(name.contains(&flat), "{name}: {event_type}");
        },
    );
    check(
        "operator_token",
        |d| fuzz::operator(d).map_err(code),
        |name, operator| assert_eq!(operator, "alice", "{name}"),
    );
}

#[test]
fn every_target_has_a_seed_directory_and_nothing_else_is_there() {
    let mut dirs: Vec<String> = std::fs::read_dir(fuzz_dir().join("seeds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut expected: Vec<String> = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    expected.sort();
    assert_eq!(dirs, expected);
}

// ---------------------------------------------------------------------------------------------
// Writing the seeds: `cargo test --test it -- --ignored write_seed_corpus`
// ---------------------------------------------------------------------------------------------

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:rotations";
const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/orders-AbC123";
const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-fuzz.pem";

struct Seeds {
    dir: PathBuf,
}

impl Seeds {
    /// Clears `target`'s generated seeds (keeping regressions) and returns a writer for it.
    fn new(target: &str) -> Self {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("ok-") || name.starts_with("err-") {
                std::fs::remove_file(path).unwrap();
            }
        }
        Self { dir }
    }

    fn put(&self, name: &str, data: impl AsRef<[u8]>) {
        std::fs::write(self.dir.join(name), data).unwrap();
    }

    fn json(&self, name: &str, value: &serde_json::Value) {
        self.put(name, serde_json::to_vec_pretty(value).unwrap());
    }
}

/// A request head and body, signed at `timestamp` with `secret` unless a signature is given.
fn signed(id: &str, timestamp: i64, body: &str, signature: Option<&str>) -> String {
    let sig = signature.map_or_else(
        || {
            sever::intake::webhook::sign(fuzz::WEBHOOK_SECRET, id, timestamp, body.as_bytes())
                .unwrap()
        },
        str::to_owned,
    );
    format!(
        "content-type: application/json\nwebhook-id: {id}\nwebhook-timestamp: {timestamp}\n\
         webhook-signature: {sig}\n\n{body}"
    )
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
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

#[test]
#[ignore = "writes the committed seed corpus; run by hand after changing a parser"]
fn write_seed_corpus() {
    use serde_json::json;
    let now = fuzz::NOW;

    let s = Seeds::new("webhook");
    // The Standard Webhooks specification's example.
    s.put(
        "ok-specification-example",
        "webhook-id: msg_p5jXN8AQM9LWM0D4loKWxJek\nwebhook-timestamp: 1614265330\n\
         webhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\n\n{\"test\": 2432232314}",
    );
    let event =
        r#"{"credential": "orders", "kind": "rotated", "rotated_at": "2021-02-25T15:00:00Z"}"#;
    s.put("ok-rotation-event", signed("msg_2Kx7", now, event, None));
    let good =
        sever::intake::webhook::sign(fuzz::WEBHOOK_SECRET, "msg_3", now, event.as_bytes()).unwrap();
    s.put(
        "ok-second-of-two-signatures",
        signed("msg_3", now, event, Some(&format!("v1,AAAA {good}"))),
    );
    s.put(
        "ok-timestamp-at-tolerance",
        signed("msg_4", now - 300, event, None),
    );
    s.put(
        "err-invalid_signature-tampered-body",
        signed("msg_5", now, event, None).replace("rotated\"", "revoked\""),
    );
    s.put(
        "err-invalid_signature-other-id",
        signed("msg_6", now, event, None).replace("msg_6", "msg_7"),
    );
    s.put(
        "err-timestamp_out_of_tolerance-stale",
        signed("msg_8", now - 301, event, None),
    );
    s.put(
        "err-malformed_header-v2-signature",
        signed("msg_9", now, event, Some("v2,AAAA")),
    );
    s.put(
        "err-malformed_header-id-with-space",
        signed("msg 10", now, event, None),
    );
    s.put(
        "err-malformed_header-timestamp",
        signed("msg_11", now, event, None).replace(&format!("timestamp: {now}"), "timestamp: soon"),
    );
    s.put(
        "err-missing_header-no-signature",
        format!("webhook-id: msg_12\nwebhook-timestamp: {now}\n\n{event}"),
    );

    let s = Seeds::new("generic_event");
    s.json(
        "ok-rotated",
        &json!({"credential": "orders", "kind": "rotated"}),
    );
    s.json(
        "ok-rotated-at-with-reason",
        &json!({"credential": "orders", "kind": "rotated", "rotated_at": "2021-02-25T15:00:00Z", "reason": "scheduled rotation"}),
    );
    s.json(
        "ok-revoked",
        &json!({"credential": "orders", "kind": "revoked", "reason": "INC-42 leaked"}),
    );
    s.json(
        "ok-rotated-at-within-skew",
        &json!({"credential": "orders", "kind": "rotated", "rotated_at": "2021-02-25T15:05:00+00:00"}),
    );
    s.json(
        "err-unknown_credential-nope",
        &json!({"credential": "nope", "kind": "rotated"}),
    );
    s.json(
        "err-invalid_request-misspelt-field",
        &json!({"credential": "orders", "kind": "rotated", "rotatedAt": "2021-02-25T15:00:00Z"}),
    );
    s.json(
        "err-invalid_request-rotated-at-in-the-future",
        &json!({"credential": "orders", "kind": "rotated", "rotated_at": "2030-01-01T00:00:00Z"}),
    );
    s.json(
        "err-invalid_request-kind",
        &json!({"credential": "orders", "kind": "expired"}),
    );
    s.json(
        "err-invalid_request-reason-too-long",
        &json!({"credential": "orders", "kind": "revoked", "reason": "x".repeat(1025)}),
    );
    s.put(
        "err-malformed_json-truncated",
        r#"{"credential": "orders", "kind": "#,
    );

    let s = Seeds::new("aws_hook");
    let hook = |step: &str| json!({"Step": step, "SecretId": ARN, "ClientRequestToken": "6d3f5c0e-8a3b-4f7e-9c41-2b5e8d7a1f00"});
    for step in ["createSecret", "setSecret", "testSecret", "finishSecret"] {
        s.json(&format!("ok-{}", step.to_ascii_lowercase()), &hook(step));
    }
    s.json("err-invalid_request-unknown-step", &hook("rotateSecret"));
    s.json(
        "err-invalid_request-no-token",
        &json!({"Step": "finishSecret", "SecretId": ARN}),
    );
    s.put("err-malformed_json-not-json", "Step=finishSecret");

    let s = Seeds::new("eventbridge");
    let envelope = |detail_type: &str, detail: serde_json::Value, resources: serde_json::Value| {
        json!({
            "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": detail_type, "source": "aws.secretsmanager",
            "account": "123456789012", "time": "2021-02-25T15:00:00Z", "region": "us-east-1",
            "resources": resources, "detail": detail,
        })
    };
    s.json(
        "ok-label-updated",
        &envelope(
            "Secret Label Updated",
            json!({"labelUpdated": "AWSCURRENT", "versionId": "v2", "name": "prod/orders"}),
            json!([ARN]),
        ),
    );
    s.json(
        "ok-rotation-succeeded",
        &envelope(
            "AWS Service Event via CloudTrail",
            json!({"eventName": "RotationSucceeded", "eventSource": "secretsmanager.amazonaws.com",
                   "additionalEventData": {"SecretId": ARN}}),
            json!([]),
        ),
    );
    s.json(
        "ok-put-secret-value",
        &envelope(
            "AWS API Call via CloudTrail",
            json!({"eventName": "PutSecretValue", "requestParameters": {"secretId": "prod/orders"},
                   "responseElements": {"versionId": "v3", "aRN": ARN}}),
            json!([]),
        ),
    );
    s.json(
        "ok-update-secret-version-stage",
        &envelope(
            "AWS API Call via CloudTrail",
            json!({"eventName": "UpdateSecretVersionStage",
                   "requestParameters": {"secretId": ARN, "versionStage": "AWSCURRENT", "moveToVersionId": "v4"}}),
            json!([]),
        ),
    );
    s.json(
        "ok-ignored-awspending",
        &envelope(
            "Secret Label Updated",
            json!({"labelUpdated": "AWSPENDING", "versionId": "v2"}),
            json!([ARN]),
        ),
    );
    s.json(
        "ok-ignored-failed-call",
        &envelope(
            "AWS API Call via CloudTrail",
            json!({"eventName": "PutSecretValue", "errorCode": "AccessDenied", "requestParameters": {"secretId": ARN}}),
            json!([]),
        ),
    );
    s.json(
        "err-invalid_request-not-eventbridge",
        &json!({"hello": "world"}),
    );
    s.json(
        "err-invalid_request-names-no-secret",
        &envelope(
            "Secret Label Updated",
            json!({"labelUpdated": "AWSCURRENT"}),
            json!([]),
        ),
    );
    s.put(
        "err-malformed_json-truncated",
        r#"{"detail-type": "Secret Label"#,
    );

    // SNS: a fresh key and a certificate valid for a century, as SNS's signing certificate.
    let tmp = tempfile::tempdir().unwrap();
    openssl(
        tmp.path(),
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
            "/CN=sns.us-east-1.amazonaws.com",
            "-days",
            "36500",
        ],
    );
    std::fs::create_dir_all(fuzz_dir().join("fixtures")).unwrap();
    std::fs::copy(
        tmp.path().join("cert.pem"),
        fuzz_dir().join("fixtures/sns-signing-cert.pem"),
    )
    .unwrap();
    let n = std::cell::Cell::new(0);
    let sns_sign = |mut body: serde_json::Value| {
        let message: sever::intake::sns::SnsMessage = serde_json::from_value(body.clone()).unwrap();
        n.set(n.get() + 1);
        let (data, sig) = (format!("d{}", n.get()), format!("s{}", n.get()));
        std::fs::write(tmp.path().join(&data), message.string_to_sign().unwrap()).unwrap();
        let digest = if message.signature_version == "1" {
            "-sha1"
        } else {
            "-sha256"
        };
        openssl(
            tmp.path(),
            &["dgst", digest, "-sign", "key.pem", "-out", &sig, &data],
        );
        use base64::Engine as _;
        body["Signature"] = json!(
            base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(tmp.path().join(&sig)).unwrap())
        );
        body
    };
    let label_updated = serde_json::to_string(&envelope(
        "Secret Label Updated",
        json!({"labelUpdated": "AWSCURRENT", "versionId": "v2"}),
        json!([ARN]),
    ))
    .unwrap();
    let notification = |version: &str, subject: Option<&str>| {
        let mut body = json!({
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": TOPIC,
            "Message": label_updated,
            "Timestamp": "2021-02-25T15:00:00.000Z",
            "SignatureVersion": version,
            "Signature": "",
            "SigningCertURL": CERT_URL,
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-east-1:123456789012:rotations:1",
        });
        if let Some(subject) = subject {
            body["Subject"] = json!(subject);
        }
        body
    };
    let confirmation = |kind: &str| {
        json!({
            "Type": kind,
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37fb687f5d51e6e2425c464de12884e7b2b6e8a9a7f0b1d5c0e6f6d1",
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe to the topic.",
            "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-1:123456789012:rotations&Token=2336412f",
            "Timestamp": "2021-02-25T15:00:00.000Z",
            "SignatureVersion": "2",
            "Signature": "",
            "SigningCertURL": CERT_URL,
        })
    };
    let s = Seeds::new("sns");
    s.json("ok-notification-v1", &sns_sign(notification("1", None)));
    s.json(
        "ok-notification-v2-with-subject",
        &sns_sign(notification("2", Some("Rotation"))),
    );
    s.json(
        "ok-subscription-confirmation",
        &sns_sign(confirmation("SubscriptionConfirmation")),
    );
    s.json(
        "ok-unsubscribe-confirmation",
        &sns_sign(confirmation("UnsubscribeConfirmation")),
    );
    let mut tampered = sns_sign(notification("2", None));
    tampered["TopicArn"] = json!("arn:aws:sns:us-east-1:123456789012:other");
    s.json("err-invalid_sns_signature-tampered-topic", &tampered);
    let mut off_sns = notification("2", None);
    off_sns["SigningCertURL"] = json!("https://sns.us-east-1.amazonaws.com.evil.example/cert.pem");
    s.json(
        "err-invalid_sns_signature-untrusted-cert-url",
        &sns_sign(off_sns),
    );
    let mut v3 = sns_sign(notification("2", None));
    v3["SignatureVersion"] = json!("3");
    s.json("err-invalid_sns_signature-signature-version-3", &v3);
    let mut digest_swapped = sns_sign(notification("1", None));
    digest_swapped["SignatureVersion"] = json!("2");
    s.json("err-invalid_sns_signature-digest-swapped", &digest_swapped);
    let mut tokenless = sns_sign(confirmation("SubscriptionConfirmation"));
    tokenless.as_object_mut().unwrap().remove("Token");
    s.json(
        "err-malformed_sns_message-confirmation-without-token",
        &tokenless,
    );
    let mut not_base64 = notification("2", None);
    not_base64["Signature"] = json!("!!!");
    s.json(
        "err-malformed_sns_message-signature-not-base64",
        &not_base64,
    );
    s.json(
        "err-malformed_sns_message-missing-fields",
        &json!({"Type": "Notification", "Message": "{}"}),
    );
    s.put("err-malformed_sns_message-not-json", "Type=Notification");

    let s = Seeds::new("vault_event");
    let vault = |event_type: &str,
                 mount: &str,
                 plugin: &str,
                 metadata: serde_json::Value,
                 namespace: Option<&str>| {
        let mut data = json!({
            "event": {"id": "a3be9fb1-b514-519f-5b25-b6f144a8c1ce", "metadata": metadata},
            "event_type": event_type,
            "plugin_info": {
                "mount_class": "secret", "mount_accessor": format!("{plugin}_1a2b3c4d"),
                "mount_path": mount, "plugin": plugin,
            },
        });
        if let Some(namespace) = namespace {
            data["namespace"] = json!(namespace);
        }
        json!({
            "id": "a3be9fb1-b514-519f-5b25-b6f144a8c1ce",
            "source": "https://vaultproject.io/",
            "specversion": "1.0",
            "type": event_type,
            "data": data,
            "datacontentype": "application/cloudevents",
            "time": "2021-02-25T15:00:00.123456789Z",
        })
    };
    let rotate = json!({"name": "orders", "operation": "rotate", "modified": "true", "path": "database/rotate-role/orders"});
    s.json(
        "ok-database-rotate",
        &vault(
            "database/rotate",
            "database/",
            "database",
            rotate.clone(),
            None,
        ),
    );
    s.json(
        "ok-database-rotate-in-namespace",
        &vault(
            "database/rotate",
            "database/",
            "database",
            rotate.clone(),
            Some("admin/team/"),
        ),
    );
    s.json(
        "ok-kv-v2-data-write",
        &vault(
            "kv-v2/data-write",
            "secret/",
            "kv",
            json!({"data_path": "secret/data/orders", "current_version": "3", "operation": "data-write", "modified": "true"}),
            None,
        ),
    );
    let mut no_mount = vault(
        "database/rotate",
        "database/",
        "database",
        rotate.clone(),
        None,
    );
    no_mount["data"]["plugin_info"]
        .as_object_mut()
        .unwrap()
        .remove("mount_path");
    s.json("err-invalid_request-no-mount-path", &no_mount);
    let mut no_data = vault(
        "database/rotate",
        "database/",
        "database",
        rotate.clone(),
        None,
    );
    no_data.as_object_mut().unwrap().remove("data");
    s.json("err-invalid_request-no-data", &no_data);
    let mut wildcard = vault("*", "database/", "database", rotate, None);
    wildcard["data"]["event_type"] = json!("*");
    s.json("err-invalid_request-wildcard-event-type", &wildcard);
    s.put(
        "err-malformed_json-truncated",
        r#"{"data": {"event_type": "database/rot"#,
    );

    let s = Seeds::new("operator_token");
    let token = fuzz::OPERATOR_TOKEN;
    s.put("ok-bearer", format!("Bearer {token}"));
    s.put("ok-bearer-with-padding", format!("Bearer   {token} "));
    s.put(
        "err-invalid_token-other-token",
        format!("Bearer {}", token.replace('0', "1")),
    );
    s.put("err-missing_token-basic", format!("Basic {token}"));
    // The scheme is case-insensitive (RFC 9110).
    s.put("ok-bearer-lowercase-scheme", format!("bearer {token}"));
    s.put("ok-bearer-uppercase-scheme", format!("BEARER {token}"));
    s.put("err-missing_token-no-space", format!("Bearer{token}"));
    s.put("err-missing_token-blank", "Bearer   ");
    s.put("err-missing_token-not-text", b"Bearer \xff\xfe".as_slice());
}
