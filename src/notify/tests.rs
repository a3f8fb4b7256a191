//! The outbox on a real SQLite store: folding, the bound, filters, PagerDuty's choices, and
//! the checks made when channels load. Delivery against real receivers is in
//! `tests/it/notify`.

use secrecy::SecretString;
use sqlx::Row;

use super::*;

const INTAKE: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OUTBOUND: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

#[derive(Debug)]
struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    notifier: Notifier,
}

/// A notifier over a fresh SQLite store, with `channels` (TOML) under `[notify]`; its
/// secrets are files in the temp dir (`{dir}` in the text).
async fn setup(notify: &str) -> Result<Setup, NotifyError> {
    setup_on(notify, None).await
}

/// [`setup`] on the store at `url` (a fresh SQLite file when `None`).
async fn setup_on(notify: &str, url: Option<String>) -> Result<Setup, NotifyError> {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        path.display().to_string()
    };
    let intake = file("intake", INTAKE);
    file("outbound", OUTBOUND);
    file("slack", "https://hooks.slack.example/services/T0/B0/secret");
    file("pd", "routingkey0123456789");
    let text = format!(
        "[webhooks]\nsecrets = [{{ file = \"{intake}\" }}]\n[notify]\n{}",
        notify.replace("{dir}", &dir.path().display().to_string())
    );
    let config = Config::parse(&text).unwrap();
    let url =
        url.unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()));
    let store = Store::connect(&SecretString::from(url)).await.unwrap();
    let notifier = Notifier::new(&config, store.clone())?;
    Ok(Setup {
        _dir: dir,
        store,
        notifier,
    })
}

fn completed(target: &str, sessions: u64) -> Notice {
    Notice {
        action_id: Some(Uuid::now_v7()),
        targets: vec![target.into()],
        logins: vec!["app".into()],
        counts: [("terminated".to_owned(), sessions)].into(),
        ..Notice::new(Event::ActionCompleted)
    }
}

async fn rows(store: &Store) -> Vec<(String, String, i64, String)> {
    sqlx::query("SELECT channel, state, folded, content FROM notifications ORDER BY created_at")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get("channel"),
                r.get("state"),
                r.get("folded"),
                r.get("content"),
            )
        })
        .collect()
}

const SLACK: &str = r#"
[[notify.channels]]
name = "ops"
kind = "slack"
url = { file = "{dir}/slack" }
events = ["action.completed", "target.down"]
"#;

#[tokio::test]
async fn a_burst_is_one_message_with_counts() {
    a_burst_folds(setup(SLACK).await.unwrap()).await;
}

#[tokio::test]
async fn a_burst_is_one_message_with_counts_on_postgres() {
    let pg = sever_testkit::pg::TestPostgres::start();
    let s = setup_on(SLACK, Some(pg.superuser_url("postgres")))
        .await
        .unwrap();
    a_burst_folds(s).await;
}

async fn a_burst_folds(s: Setup) {
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.extend(
            s.notifier
                .notify(&completed(&format!("t{}", i % 3), 2))
                .await
                .unwrap(),
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every notice folded into the first: {ids:?}");
    let rows = rows(&s.store).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2, 50);
    let digest: Digest = serde_json::from_str(&rows[0].3).unwrap();
    assert_eq!(digest.notices, 50);
    assert_eq!(digest.counts["terminated"], 100);
    assert_eq!(digest.targets.items.len(), 3);
    assert!(!s.notifier.delivered(&ids).await.unwrap());

    // Once the first is being sent, the next notice waits a coalescing interval for more.
    let claimed = outbox::claim(&s.store, "ops", "me", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.folded, 50);
    let later = s.notifier.notify(&completed("t0", 1)).await.unwrap();
    assert_ne!(later, ids);
    let due: String = sqlx::query("SELECT due_at FROM notifications WHERE id = $1")
        .bind(later[0].to_string())
        .fetch_one(s.store.pool())
        .await
        .unwrap()
        .get("due_at");
    let due = chrono::DateTime::parse_from_rfc3339(&due).unwrap();
    assert!(due > Utc::now() + chrono::Duration::seconds(50), "{due}");
    assert!(
        outbox::claim(&s.store, "ops", "me", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "not due yet"
    );
}

use std::time::Duration;

#[tokio::test]
async fn a_full_outbox_drops_and_the_drop_is_audited_once_per_channel() {
    let s = setup(&format!(
        "max_outbox = 2\n{}",
        SLACK.replace("events =", "coalesce = \"0s\"\nevents =")
    ))
    .await
    .unwrap();
    let mut queued = 0;
    for _ in 0..5 {
        queued += s.notifier.notify(&completed("t", 1)).await.unwrap().len();
    }
    assert_eq!(queued, 2);
    assert_eq!(rows(&s.store).await.len(), 2);
    let audit = Audit::new(s.store.clone());
    audit.transact(&deliver::Drops).await.unwrap();
    audit.transact(&deliver::Drops).await.unwrap();
    let records = audit
        .list(&crate::audit::ListFilter {
            kind: Some("notification.dropped".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let detail: serde_json::Value = serde_json::from_str(&records[0].detail).unwrap();
    assert_eq!(detail["channel"], "ops");
    assert_eq!(detail["dropped"]["action.completed"], 3, "{detail}");
}

#[tokio::test]
async fn filters_and_events_pick_the_channels() {
    let s = setup(
        r#"
        [[notify.channels]]
        name = "main-only"
        kind = "slack"
        url = { file = "{dir}/slack" }
        events = ["action.completed", "action.incomplete"]
        filter = { targets = ["main"], min_severity = "warning" }

        [[notify.channels]]
        name = "orders"
        kind = "slack"
        url = { file = "{dir}/slack" }
        events = ["action.completed"]
        filter = { credentials = ["orders"] }
        "#,
    )
    .await
    .unwrap();
    // Info on main: below the first's severity; no credential: not the second's.
    assert!(
        s.notifier
            .notify(&completed("main", 1))
            .await
            .unwrap()
            .is_empty()
    );
    let mut incomplete = completed("main", 1);
    incomplete.event = Some(Event::ActionIncomplete);
    assert_eq!(s.notifier.notify(&incomplete).await.unwrap().len(), 1);
    incomplete.targets = vec!["other".into()];
    assert!(s.notifier.notify(&incomplete).await.unwrap().is_empty());
    let mut orders = completed("other", 1);
    orders.credential = Some("orders".into());
    assert_eq!(s.notifier.notify(&orders).await.unwrap().len(), 1);
    let channels: Vec<String> = rows(&s.store).await.into_iter().map(|r| r.0).collect();
    assert_eq!(channels, vec!["main-only".to_owned(), "orders".to_owned()]);
    assert!(!s.notifier.wants(Event::LockStarted));
}

#[tokio::test]
async fn pagerduty_triggers_per_action_and_resolves_only_what_it_opened() {
    let s = setup(
        r#"
        [[notify.channels]]
        name = "pager"
        kind = "pagerduty"
        routing_key = { file = "{dir}/pd" }
        events = ["action.completed", "action.given_up"]
        "#,
    )
    .await
    .unwrap();
    // A revocation that completed, nothing triggered: nothing to send.
    assert!(
        s.notifier
            .notify(&completed("main", 1))
            .await
            .unwrap()
            .is_empty()
    );
    // A rotation that completed: a change event.
    let mut rotation = completed("main", 1);
    rotation.credential = Some("orders".into());
    assert_eq!(s.notifier.notify(&rotation).await.unwrap().len(), 1);
    // Two actions given up: an incident each, not folded together.
    let mut given_up = Vec::new();
    for _ in 0..2 {
        let mut n = completed("main", 0);
        n.event = Some(Event::ActionGivenUp);
        given_up.push(n.action_id.unwrap());
        assert_eq!(s.notifier.notify(&n).await.unwrap().len(), 1);
    }
    // The first of them completes after all: its incident is resolved.
    let mut back = completed("main", 1);
    back.action_id = Some(given_up[0]);
    assert_eq!(s.notifier.notify(&back).await.unwrap().len(), 1);
    let sends: Vec<(Option<PagerdutySend>, Option<String>)> =
        sqlx::query("SELECT content, subject FROM notifications ORDER BY created_at")
            .fetch_all(s.store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let digest: Digest = serde_json::from_str(&r.get::<String, _>("content")).unwrap();
                (digest.pagerduty, r.get("subject"))
            })
            .collect();
    let key = |i: usize| Some(format!("sever/action/{}", given_up[i]));
    assert_eq!(
        sends,
        vec![
            (Some(PagerdutySend::Change), None),
            (Some(PagerdutySend::Trigger), key(0)),
            (Some(PagerdutySend::Trigger), key(1)),
            (Some(PagerdutySend::Resolve), key(0)),
        ]
    );
}

#[tokio::test]
async fn an_outbound_secret_may_not_be_an_intake_secret() {
    let channel = |secret: &str| {
        format!(
            "[[notify.channels]]\nname = \"siem\"\nkind = \"webhook\"\n\
             url = \"https://siem.example/x\"\nsecret = {{ file = \"{{dir}}/{secret}\" }}\n\
             events = [\"action.started\"]"
        )
    };
    assert!(setup(&channel("outbound")).await.is_ok());
    let err = setup(&channel("intake")).await.unwrap_err().to_string();
    assert!(err.contains("notify.channels[0].secret"), "{err}");
    assert!(err.contains("webhooks.secrets"), "{err}");
    assert!(!err.contains("MfKQ9r8"), "{err}");
    let err = setup(&channel("pd")).await.unwrap_err().to_string();
    assert!(err.contains("whsec_"), "{err}");
}

#[tokio::test]
async fn a_secret_url_must_be_https_once_loaded() {
    let err = setup(&SLACK.replace("{dir}/slack", "{dir}/plain")).await;
    // The file is missing: the error names the key and the file, not a value.
    let err = err.unwrap_err().to_string();
    assert!(err.contains("notify.channels[0].url"), "{err}");
    let s = setup(
        r#"
        [[notify.channels]]
        name = "ops"
        kind = "slack"
        url = { file = "{dir}/pd" }
        events = ["target.down"]
        "#,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(s.contains("not an absolute URL"), "{s}");
    assert!(!s.contains("routingkey"), "{s}");
}

/// A notice queued in the caller's transaction commits with it; one whose outbox fails (the
/// table is gone) is lost, logged, and the caller's transaction still commits.
async fn queued_in_a_transaction(s: Setup) {
    let mut tx = s.store.begin_write().await.unwrap();
    let ids = s
        .notifier
        .enqueue_in(&mut tx, &completed("t", 1))
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    tx.commit().await.unwrap();
    assert_eq!(rows(&s.store).await.len(), 1);

    sqlx::query("ALTER TABLE notifications RENAME TO notifications_gone")
        .execute(s.store.pool())
        .await
        .unwrap();
    let mut tx = s.store.begin_write().await.unwrap();
    sqlx::query("INSERT INTO watch_marks (key, value, seen_at) VALUES ('mine', 'x', 'now')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let ids = s
        .notifier
        .enqueue_in(&mut tx, &completed("t", 1))
        .await
        .unwrap();
    assert!(ids.is_empty());
    sqlx::query("INSERT INTO watch_marks (key, value, seen_at) VALUES ('after', 'y', 'now')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.store.mark("mine").await.unwrap().as_deref(), Some("x"));
    assert_eq!(s.store.mark("after").await.unwrap().as_deref(), Some("y"));
}

#[tokio::test]
async fn an_outbox_failure_never_fails_the_transaction_it_is_queued_in() {
    queued_in_a_transaction(setup(SLACK).await.unwrap()).await;
}

#[tokio::test]
async fn an_outbox_failure_never_fails_the_transaction_it_is_queued_in_on_postgres() {
    let pg = sever_testkit::pg::TestPostgres::start();
    let s = setup_on(SLACK, Some(pg.superuser_url("postgres")))
        .await
        .unwrap();
    queued_in_a_transaction(s).await;
}
