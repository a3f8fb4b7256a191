//! Delivery under trouble and under load: a receiver that accepts and never answers holds
//! no termination and gets the notification once when it answers; `429` with
//! `Retry-After`; a burst folded into few messages with counts; a channel's rate and its
//! outbox's bound, with the dropped audited; PagerDuty resolving only what it triggered.
//! The last four drive `sever::notify::Notifier` itself over a SQLite store.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever::notify::{Event, Notice, Notifier};
use sever_testkit::pg::TestPostgres;
use sever_testkit::receiver::{Answer, Receiver};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{DELIVERED, OUTBOUND_SECRET, channel, config, on_path, outbox, wait_records};
use crate::support::sever::{TestServer, Workspace, pids, sorted};

#[tokio::test]
async fn an_action_completes_while_a_hung_receiver_holds_its_notification_then_gets_it_once() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let receiver = Receiver::start_hanging().await;
    let secret = ws.secret_path("outbound.secret", OUTBOUND_SECRET);
    let hook = channel(
        "siem",
        "webhook",
        &format!(
            "url = \"{}\"\nsecret = {{ file = \"{secret}\" }}\ncoalesce = \"0s\"\n\
             timeout = \"300ms\"",
            receiver.url("/in")
        ),
        &["action.completed"],
    );
    let config = config(&pg, &ws, &hook).await.toml();
    let sessions = pg.open_sessions("app", "pw", 2).await;
    let server = TestServer::start(&ws.write_config(&config)).await;

    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "reason": "INC-5"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&sessions));
    for pid in &sessions {
        assert!(pg.wait_gone(*pid, Duration::from_secs(5)).await);
    }

    // Its notification meanwhile: tried, not answered, waiting for another attempt.
    let failed = wait_records(&ws, "notification.failed", 1).await;
    assert_eq!(
        failed.len(),
        1,
        "one record at the first failure: {failed:?}"
    );
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        !error.contains("/in") && !error.contains("127.0.0.1"),
        "{error}"
    );
    let rows = outbox(&ws).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].2, "pending", "{rows:?}");
    assert!(
        receiver.received().is_empty(),
        "a hung receiver answers nothing"
    );
    assert!(ws.records("notification.delivered").await.is_empty());

    receiver.hang(false);
    let delivered = wait_records(&ws, "notification.delivered", 1).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(
        delivered[0]["attempts"].as_i64().unwrap() >= 2,
        "{delivered:?}"
    );
    // Nothing more comes: delivered once.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].header("webhook-id"), Some(rows[0].0.as_str()));
    assert_eq!(got[0].json()["data"]["counts"]["terminated"], 2);
    assert_eq!(ws.records("notification.delivered").await.len(), 1);
    assert_eq!(outbox(&ws).await[0].2, "delivered");
    server.stop().await;
}

/// A notifier over its own SQLite store with `[notify]` as `notify` (TOML), delivering
/// until the returned token is cancelled.
struct Running {
    notifier: Arc<Notifier>,
    audit: sever::audit::Audit,
    stop: CancellationToken,
    worker: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

async fn running(notify: &str, files: &[(&str, &str)]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!("[notify]\npoll_interval = \"100ms\"\nretry_min = \"200ms\"\n{notify}");
    for (name, value) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        text = text.replace(&format!("{{{name}}}"), &path.display().to_string());
    }
    let config = sever::config::Config::parse(&text).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let store = sever::store::Store::connect(&secrecy::SecretString::from(url))
        .await
        .unwrap();
    let audit = sever::audit::Audit::new(store.clone());
    let notifier = Arc::new(
        Notifier::new(&config, store)
            .unwrap()
            .with_audit(audit.clone()),
    );
    let stop = CancellationToken::new();
    let worker = tokio::spawn(notifier.clone().run(stop.clone()));
    Running {
        notifier,
        audit,
        stop,
        worker: Some(worker),
        _dir: dir,
    }
}

impl Running {
    async fn records(&self, kind: &str) -> Vec<Value> {
        self.audit
            .list(&sever::audit::ListFilter {
                kind: Some(kind.into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(&r.detail).unwrap())
            .collect()
    }

    /// Stops the worker (which audits what was dropped on its way out).
    async fn stop(mut self) -> Self {
        self.stop.cancel();
        if let Some(worker) = self.worker.take() {
            worker.await.unwrap();
        }
        self
    }
}

fn completed(target: &str) -> Notice {
    Notice {
        action_id: Some(Uuid::now_v7()),
        targets: vec![target.into()],
        logins: vec!["app".into()],
        counts: [("terminated".to_owned(), 1)].into(),
        ..Notice::new(Event::ActionCompleted)
    }
}

#[tokio::test]
async fn a_burst_is_a_few_messages_with_counts_and_a_full_outbox_drops_and_audits() {
    let receiver = Receiver::start().await;
    let notify = format!(
        "max_outbox = 5\n{}{}",
        channel(
            "burst",
            "slack",
            "url = { file = \"{burst}\" }\ncoalesce = \"1s\"",
            &["action.completed"],
        ),
        channel(
            "tight",
            "slack",
            "url = { file = \"{tight}\" }\ncoalesce = \"0s\"\nrate_per_minute = 2",
            &["action.completed"],
        ),
    );
    let files = [
        ("burst", receiver.url("/burst")),
        ("tight", receiver.url("/tight")),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, u)| (*n, u.as_str())).collect();
    let run = running(&notify, &files).await;
    // Each notice is queued on `burst` (folded) and, while there is room, on `tight`.
    let mut tight_queued = 0;
    for i in 0..200 {
        let ids = run
            .notifier
            .notify(&completed(&format!("t{}", i % 4)))
            .await
            .unwrap();
        tight_queued += ids.len() - 1;
    }
    // 5 fit, and as many more as were sent meanwhile (at most 2, the rate).
    assert!((5..=7).contains(&tight_queued), "{tight_queued}");

    // Folded: the first message at once, the rest a second later, with their counts.
    let deadline = tokio::time::Instant::now() + DELIVERED;
    let counted = |r: &sever_testkit::receiver::Received| -> u64 {
        let text = r.json()["text"].as_str().unwrap().to_owned();
        match text.split_once('×') {
            Some((_, n)) => n.split(':').next().unwrap().trim().parse().unwrap(),
            None => 1,
        }
    };
    let burst = loop {
        let burst = on_path(&receiver, "/burst");
        if burst.iter().map(counted).sum::<u64>() >= 200 || tokio::time::Instant::now() > deadline {
            break burst;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(burst.iter().map(counted).sum::<u64>(), 200, "{burst:?}");
    assert!(burst.len() <= 3, "200 notices, {} messages", burst.len());
    let section = burst.last().unwrap().json()["blocks"][1]["text"]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        section.contains("`t0`") && section.contains("`t3`"),
        "{section}"
    );

    // Unfolded and at most 2 a minute: 2 sent, the rest waiting or dropped.
    let tight = receiver.wait_for(burst.len() + 2, DELIVERED).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tight_now = on_path(&receiver, "/tight");
    assert_eq!(tight_now.len(), 2, "{tight:?}");
    let run = run.stop().await;
    let dropped = run.records("notification.dropped").await;
    let tight_drops: u64 = dropped
        .iter()
        .filter(|d| d["channel"] == "tight")
        .map(|d| d["dropped"]["action.completed"].as_u64().unwrap())
        .sum();
    assert_eq!(tight_drops, 200 - tight_queued as u64, "{dropped:?}");
    assert!(
        dropped.iter().all(|d| d["channel"] != "burst"),
        "{dropped:?}"
    );
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_and_audited_once() {
    let receiver = Receiver::start().await;
    receiver.script([Answer::new(429, "rate_limited").header("Retry-After", "1")]);
    let notify = channel(
        "ops",
        "slack",
        "url = { file = \"{slack}\" }\ncoalesce = \"0s\"",
        &["action.completed"],
    );
    let url = receiver.url("/hook");
    let run = running(&notify, &[("slack", url.as_str())]).await;
    let ids = run.notifier.notify(&completed("main")).await.unwrap();
    assert_eq!(ids.len(), 1);

    let got = receiver.wait_for(2, DELIVERED).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let delivered = loop {
        if run.notifier.delivered(&ids).await.unwrap() {
            break true;
        }
        if receiver.received().len() > 2 {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(delivered);
    let failed = run.records("notification.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]["error"].as_str().unwrap().starts_with("HTTP 429"),
        "{failed:?}"
    );
    // The second attempt was scheduled no sooner than Slack asked.
    let failed_record = run
        .audit
        .list(&sever::audit::ListFilter {
            kind: Some("notification.failed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let at: DateTime<Utc> = failed_record[0].at.parse().unwrap();
    let next: DateTime<Utc> = failed[0]["next_attempt_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        next - at >= chrono::Duration::milliseconds(900),
        "{at} -> {next}"
    );
    let delivered = run.records("notification.delivered").await;
    assert_eq!(delivered[0]["attempts"], 2, "{delivered:?}");
    run.stop().await;
}

#[tokio::test]
async fn pagerduty_resolves_only_the_incidents_it_triggered() {
    let receiver = Receiver::start().await;
    receiver.answer(Answer::new(202, r#"{"status":"success"}"#));
    let notify = channel(
        "pager",
        "pagerduty",
        &format!(
            "url = \"{}\"\nrouting_key = {{ file = \"{{pd}}\" }}",
            receiver.url("/pd")
        ),
        &["action.given_up", "action.completed"],
    );
    let run = running(&notify, &[("pd", "routing-key-0123456789")]).await;
    let failing = Uuid::now_v7();
    let mut given_up = completed("main");
    given_up.event = Some(Event::ActionGivenUp);
    given_up.action_id = Some(failing);
    given_up.reason = Some("target does not answer".into());
    let trigger = run.notifier.notify(&given_up).await.unwrap();
    let got = receiver.wait_for(1, DELIVERED).await;
    assert_eq!(got[0].path, "/pd/v2/enqueue");
    assert_eq!(got[0].json()["event_action"], "trigger");
    while !run.notifier.delivered(&trigger).await.unwrap() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // It completes after all: its incident is resolved, by its dedup key.
    let mut back = completed("main");
    back.action_id = Some(failing);
    assert_eq!(run.notifier.notify(&back).await.unwrap().len(), 1);
    let got = receiver.wait_for(2, DELIVERED).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let resolve = got[1].json();
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], format!("sever/action/{failing}"));
    assert_eq!(resolve["routing_key"], "routing-key-0123456789");
    assert!(resolve.get("payload").is_none(), "{resolve}");

    // Another action that completes had no incident: nothing is sent for it.
    assert!(
        run.notifier
            .notify(&completed("main"))
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 2);
    run.stop().await;
}
