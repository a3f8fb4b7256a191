//! The SNS door under unauthenticated messages: a message for a topic nobody configured (or
//! with no topic configured at all) is refused before any certificate is fetched, a failing
//! certificate URL is fetched once however often it is named, and concurrent fetches are
//! bounded. The real server runs with the SNS stand-in (`tests/it/support/sns.rs`), which counts
//! every certificate GET and how many run at once; no database is needed, since nothing here
//! gets as far as a rotation.

use std::sync::Arc;

use crate::support::sever::{TestServer, Workspace};
use crate::support::sns::{CERT_URL, TestSns};
use futures_util::future::join_all;
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde_json::{Value, json};
use sever::intake::sns::MAX_FETCHES;

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:sever-rotations";
const STRANGER: &str = "arn:aws:sns:us-east-1:999999999999:not-ours";

/// sever trusting `topics`, its certificates served by a fresh SNS stand-in.
struct Env {
    sns: Arc<TestSns>,
    server: TestServer,
    _ws: Workspace,
}

async fn env(topics: &[&str]) -> Env {
    let sns = TestSns::new();
    let ws = Workspace::new();
    let config = ws
        .config()
        .set("targets.nowhere.engine", "postgres")
        .set(
            "targets.nowhere.url",
            "postgres://sever@127.0.0.1:1/postgres",
        )
        .set("credentials.noop.policy", "none")
        .credential("noop", &[("nowhere", "app")])
        .set("aws.sns.topics", topics.to_vec())
        .toml();
    let options = sever::RunOptions {
        sns_http: sns.clone(),
        ..Default::default()
    };
    let server = TestServer::start_with(&ws.write_config(&config), options).await;
    Env {
        sns,
        server,
        _ws: ws,
    }
}

/// What sever answered: status, error code (if any), `Retry-After` (if any), body.
struct Answer {
    status: StatusCode,
    code: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

impl Env {
    async fn post(&self, body: Vec<u8>, kind: &str) -> Answer {
        let r = self
            .server
            .client
            .post(self.server.url("/v1/events/aws"))
            .header("x-amz-sns-message-type", kind)
            .header("content-type", "text/plain; charset=UTF-8")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let retry_after = r
            .headers()
            .get(RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = r.json().await.unwrap();
        let code = body["error"]["code"].as_str().map(str::to_owned);
        Answer {
            status,
            code,
            retry_after,
            body,
        }
    }
}

/// A certificate URL on an SNS host that the stand-in fails to serve.
fn failing_url(name: &str) -> String {
    format!("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-{name}.pem")
}

#[tokio::test]
async fn a_message_for_a_topic_not_configured_is_refused_before_any_fetch() {
    let e = env(&[TOPIC]).await;
    let failing = failing_url("stranger");
    let messages = [
        (
            e.sns.notification(STRANGER, "n-1", &json!({})),
            "Notification",
        ),
        (
            e.sns.notification_via(STRANGER, "n-2", &failing),
            "Notification",
        ),
        (
            e.sns.confirmation(STRANGER, "t-stranger"),
            "SubscriptionConfirmation",
        ),
    ];
    for (body, kind) in messages {
        let a = e.post(body, kind).await;
        assert_eq!(
            (a.status, a.code.as_deref()),
            (StatusCode::FORBIDDEN, Some("untrusted_topic")),
            "{}",
            a.body
        );
    }
    assert_eq!(e.sns.fetched(), Vec::<String>::new(), "nothing was fetched");
    assert!(e.sns.confirmations().is_empty());

    // The configured topic still works: its subscription is verified and confirmed.
    let a = e
        .post(e.sns.confirmation(TOPIC, "t-1"), "SubscriptionConfirmation")
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(e.sns.fetched(), [CERT_URL]);
    assert_eq!(e.sns.confirmations().len(), 1);
    e.server.stop().await;
}

#[tokio::test]
async fn with_no_topic_configured_every_sns_message_is_refused_without_a_fetch() {
    let e = env(&[]).await;
    let messages = [
        (e.sns.notification(TOPIC, "n-1", &json!({})), "Notification"),
        (
            e.sns.notification_via(TOPIC, "n-2", &failing_url("none")),
            "Notification",
        ),
        (e.sns.confirmation(TOPIC, "t-1"), "SubscriptionConfirmation"),
    ];
    for (body, kind) in messages {
        let a = e.post(body, kind).await;
        assert_eq!(
            (a.status, a.code.as_deref()),
            (StatusCode::FORBIDDEN, Some("untrusted_topic")),
            "{}",
            a.body
        );
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("aws.sns.topics is empty"), "{message}");
    }
    assert_eq!(e.sns.fetched(), Vec::<String>::new(), "nothing was fetched");
    assert!(e.sns.confirmations().is_empty());
    e.server.stop().await;
}

#[tokio::test]
async fn a_failing_certificate_url_is_fetched_once_while_its_failure_is_remembered() {
    let e = env(&[TOPIC]).await;
    // One after another: the first fetch fails, the next four are answered from memory.
    let sequential = failing_url("sequential");
    for i in 0..5 {
        let body = e
            .sns
            .notification_via(TOPIC, &format!("s-{i}"), &sequential);
        let a = e.post(body, "Notification").await;
        assert_eq!(
            (a.status, a.code.as_deref()),
            (StatusCode::BAD_GATEWAY, Some("sns_unavailable")),
            "{}",
            a.body
        );
    }
    assert_eq!(e.sns.fetched(), std::slice::from_ref(&sequential));

    // All at once: the twenty share the one fetch already running for their URL.
    let together = failing_url("together");
    let bodies: Vec<_> = (0..20)
        .map(|i| e.sns.notification_via(TOPIC, &format!("t-{i}"), &together))
        .collect();
    let answers = join_all(bodies.into_iter().map(|b| e.post(b, "Notification"))).await;
    for a in &answers {
        assert_eq!(a.code.as_deref(), Some("sns_unavailable"), "{}", a.body);
    }
    assert_eq!(e.sns.fetched(), [sequential, together]);
    e.server.stop().await;
}

#[tokio::test]
async fn concurrent_certificate_fetches_are_bounded() {
    let e = env(&[TOPIC]).await;
    let bodies: Vec<_> = (0..50)
        .map(|i| {
            let url = failing_url(&format!("distinct-{i}"));
            e.sns.notification_via(TOPIC, &format!("d-{i}"), &url)
        })
        .collect();
    let answers = join_all(bodies.into_iter().map(|b| e.post(b, "Notification"))).await;
    for a in &answers {
        match a.code.as_deref() {
            Some("sns_unavailable") => assert_eq!(a.status, StatusCode::BAD_GATEWAY),
            // Waited too long for a fetch slot: refused, with a hint when to come back.
            Some("sns_busy") => {
                assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
                assert!(a.retry_after.is_some(), "{}", a.body);
            }
            _ => panic!("unexpected answer {}: {}", a.status, a.body),
        }
    }
    let fetched = e.sns.fetched().len();
    let refused = answers
        .iter()
        .filter(|a| a.code.as_deref() == Some("sns_busy"))
        .count();
    assert_eq!(fetched + refused, 50, "each message fetched or was refused");
    let most = e.sns.max_in_flight();
    assert!(
        (1..=MAX_FETCHES).contains(&most),
        "{most} fetches ran at once, more than {MAX_FETCHES}"
    );
    e.server.stop().await;
}
