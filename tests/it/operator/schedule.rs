//! Announced and scheduled revocations through the real server, against a real PostgreSQL:
//! announced at once, nothing ended before its time, and at its time the sessions selected
//! then (a newer one included) are ended, across a restart of sever in between; a scheduled
//! revocation called off ends nothing and its cancellation is announced; the waiting list
//! (`status=scheduled`); a window that never opens expires; bad schedules are refused.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;
use sever_testkit::receiver::Receiver;

use crate::support::sever::{TestServer, Workspace, cli, create_admin, stdout};

const GONE: Duration = Duration::from_secs(8);

/// A whsec_ secret for the announcements' webhook channel.
const HOOK_SECRET: &str = "whsec_c2V2ZXItc2NoZWR1bGUtdGVzdC1zZWNyZXQtMDE=";

async fn server_for(pg: &TestPostgres, ws: &Workspace) -> std::path::PathBuf {
    server_with(pg, ws, None).await
}

/// A server whose announcements go to a webhook channel at `hook`, if given.
async fn server_with(pg: &TestPostgres, ws: &Workspace, hook: Option<&str>) -> std::path::PathBuf {
    create_admin(pg).await;
    pg.create_login("app", "pw").await;
    let channel = hook.map_or(String::new(), |url| {
        let secret = ws.secret_path("hook.secret", HOOK_SECRET);
        format!(
            r#"[notify]
            poll_interval = "100ms"
            retry_min = "200ms"
            retry_max = "500ms"
            timeout = "1s"
            [[notify.channels]]
            name = "ops"
            kind = "webhook"
            url = "{url}"
            allow_http = true
            secret = {{ file = "{secret}" }}
            coalesce = "0s"
            events = ["announcement.made", "announcement.cancelled"]
            "#
        )
    });
    let config = ws
        .target_config(ws.config(), "main", pg)
        .set("queue.poll_interval", "100ms")
        .merge_toml(&channel)
        .merge_toml(
            r#"[[windows]]
            name = "never"
            [[windows.time_intervals]]
            years = ["2020"]"#,
        )
        .toml();
    ws.write_config(&config)
}

/// The action's status once it is no longer running (or after 5 s).
async fn settled(server: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, action) = server.operator_get(&format!("/v1/actions/{id}")).await;
        if action["status"] != "running" || Instant::now() > deadline {
            return action;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_record(ws: &Workspace, kind: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = ws.records(kind).await;
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_announced_revocation_waits_then_ends_what_is_selected_then_across_a_restart() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let hook = Receiver::start().await;
    let path = server_with(&pg, &ws, Some(&hook.url("/hook"))).await;
    let server = TestServer::start(&path).await;
    let early = pg.open_sessions("app", "pw", 2).await;

    let (status, answer) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "reason": "planned rotation",
                    "notify_before": "3s"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["status"], "scheduled", "{answer}");
    let id = answer["action_id"].as_str().unwrap().to_owned();
    let act_at: chrono::DateTime<chrono::Utc> = answer["act_at"].as_str().unwrap().parse().unwrap();

    let announced = wait_for_record(&ws, "announcement.made").await;
    assert_eq!(announced.len(), 1, "announced at once: {announced:?}");
    assert_eq!(announced[0]["logins"], json!(["app"]));
    assert_eq!(announced[0]["reason"], "planned rotation");
    // Delivered to the channel before anything ends: what, where, why and when.
    let delivered = hook.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let body = delivered[0].json();
    assert_eq!(body["type"], "announcement.made", "{body}");
    let text = body.to_string();
    for needle in ["app", "main", "planned rotation", &id] {
        assert!(text.contains(needle), "{needle} in {body}");
    }
    let (status, waiting) = server.operator_get("/v1/actions?status=scheduled").await;
    assert_eq!(status, StatusCode::OK, "{waiting}");
    assert_eq!(waiting["actions"][0]["action_id"], id, "{waiting}");
    for pid in &early {
        assert!(pg.is_alive(*pid).await, "nothing ends before its time");
    }

    // sever restarts while the action waits; a session opens meanwhile.
    server.stop().await;
    let late = pg.open_sessions("app", "pw", 1).await;
    assert!(
        chrono::Utc::now() < act_at,
        "the test must restart before act_at"
    );
    let server = TestServer::start(&path).await;
    for pid in early.iter().chain(&late) {
        assert!(
            pg.wait_gone(*pid, GONE).await,
            "session {pid} ended at its time"
        );
    }
    assert!(chrono::Utc::now() >= act_at, "not before act_at ({act_at})");
    let action = settled(&server, &id).await;
    assert_eq!(action["status"], "completed", "{action}");
    assert_eq!(
        ws.records("announcement.made").await.len(),
        1,
        "announced once, not again after the restart"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_cancelled_revocation_ends_nothing_and_its_cancellation_is_announced() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let path = server_for(&pg, &ws).await;
    let server = TestServer::start(&path).await;
    let sessions = pg.open_sessions("app", "pw", 2).await;
    let not_before = chrono::Utc::now() + chrono::Duration::seconds(3);
    let (status, answer) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "reason": "maintenance",
                    "notify_before": "1s", "not_before": not_before}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = answer["action_id"].as_str().unwrap().to_owned();
    assert!(!wait_for_record(&ws, "announcement.made").await.is_empty());

    let cancel = |reason: Value| {
        let server = &server;
        let id = id.clone();
        async move {
            server
                .operator_post(
                    &format!("/v1/actions/{id}/cancel"),
                    &json!({"reason": reason}),
                )
                .await
        }
    };
    // Its status says it waits for its time, as `status=scheduled` lists it.
    let (_, action) = server.operator_get(&format!("/v1/actions/{id}")).await;
    assert_eq!(
        (&action["status"], &action["scheduled"]),
        (&json!("running"), &json!(true)),
        "{action}"
    );
    let (status, refused) = cancel(json!(" ")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let (status, report) = cancel(json!("the window moved")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "cancelled", "{report}");
    let (status, again) = cancel(json!("twice")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    tokio::time::sleep(Duration::from_millis(3500)).await;
    for pid in &sessions {
        assert!(
            pg.is_alive(*pid).await,
            "a cancelled revocation ends nothing"
        );
    }
    let cancelled = ws.records("action.cancelled").await;
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0]["reason"], "the window moved");
    let announced = ws.records("announcement.cancelled").await;
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(announced[0]["reason"], "the window moved");
    let (_, action) = server.operator_get(&format!("/v1/actions/{id}")).await;
    assert_eq!(action["status"], "cancelled", "{action}");
    assert_eq!(action["scheduled"], false, "{action}");
    assert!(ws.records("session.terminated").await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_window_that_never_opens_expires_and_bad_schedules_are_refused() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let path = server_for(&pg, &ws).await;
    let server = TestServer::start(&path).await;
    let sessions = pg.open_sessions("app", "pw", 1).await;
    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "reason": "r",
                    "window": "never", "max_wait": "1h"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "expired", "{report}");
    assert!(pg.is_alive(sessions[0]).await);
    assert_eq!(ws.records("announcement.cancelled").await.len(), 1);

    for (body, needle) in [
        (json!({"window": "nope"}), "no [[windows]]"),
        (
            json!({"notify_before": "1h", "not_before": chrono::Utc::now()}),
            "in time",
        ),
        (json!({"require_announcement": true}), "notify_before"),
    ] {
        let mut request = json!({"login": "app", "targets": ["main"], "reason": "r"});
        request
            .as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let (status, refused) = server.operator_post("/v1/revocations", &request).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        assert!(refused.to_string().contains(needle), "{refused}");
    }

    // The CLI schedules for the service and calls off.
    let out = cli(
        &path,
        &[
            "revoke",
            "--login",
            "app",
            "--target",
            "main",
            "--reason",
            "later",
            "--not-before",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert!(
        !out.status.success(),
        "more than 30 days ahead is refused: {out:?}"
    );
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = cli(
        &path,
        &[
            "revoke",
            "--login",
            "app",
            "--target",
            "main",
            "--reason",
            "later",
            "--not-before",
            &at,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let id = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"))
        .to_owned();
    assert!(text.contains("scheduled"), "{text}");
    let out = cli(&path, &["action", "cancel", &id, "--reason", "not needed"]);
    assert!(out.status.success(), "{out:?}");
    let (_, action) = server.operator_get(&format!("/v1/actions/{id}")).await;
    assert_eq!(action["status"], "cancelled", "{action}");
    server.stop().await;
}

#[tokio::test]
async fn a_credential_that_announces_rotations_waits_and_a_revoked_event_never_does() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .credential("orders", &[("main", "app")])
        .set("credentials.orders.notify_before", "2s")
        .set("queue.poll_interval", "100ms")
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let rotated = pg.open_sessions("app", "pw", 2).await;

    let (status, answer) = server
        .event(&json!({"credential": "orders", "kind": "rotated"}))
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "answered at once, even asked to wait: {answer}"
    );
    assert_eq!(answer["status"], "scheduled", "{answer}");
    let announced = wait_for_record(&ws, "announcement.made").await;
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(announced[0]["origin"], "event");
    for pid in &rotated {
        assert!(pg.is_alive(*pid).await, "the rotation waits for its time");
    }
    for pid in &rotated {
        assert!(pg.wait_gone(*pid, GONE).await, "then ends them");
    }

    let revoked = pg.open_sessions("app", "pw", 1).await;
    let (status, report) = server
        .event(&json!({"credential": "orders", "kind": "revoked"}))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a revocation acts at once: {report}"
    );
    assert_eq!(report["status"], "completed", "{report}");
    assert!(pg.wait_gone(revoked[0], GONE).await);
    assert_eq!(ws.records("announcement.made").await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_scheduled_lock_starts_at_its_time_and_its_expiry_counts_from_then() {
    use sqlx::Connection;
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    create_admin(&pg).await;
    pg.exec("ALTER ROLE sever_admin CREATEROLE").await;
    pg.create_login("app", "pw").await;
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .set("targets.main.locks", true)
        .set("queue.poll_interval", "100ms")
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let can_log_in = || async {
        sqlx::PgConnection::connect(&pg.url("app", "pw", "postgres"))
            .await
            .is_ok()
    };
    let asked = chrono::Utc::now();
    let (status, answer) = server
        .operator_post(
            "/v1/locks",
            &json!({"login": "app", "targets": ["main"], "reason": "incident drill",
                    "for": "2s", "notify_before": "2s"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["status"], "scheduled", "{answer}");
    assert!(can_log_in().await, "not locked before its time");
    assert!(!wait_for_record(&ws, "announcement.made").await.is_empty());
    // Locked from about 2s on, for 2s: out between 2s and 4s after the request.
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut locked_at = None;
    while Instant::now() < deadline && locked_at.is_none() {
        if !can_log_in().await {
            locked_at = Some(chrono::Utc::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let locked_at = locked_at.expect("the lock was taken at its time");
    assert!(
        locked_at - asked >= chrono::Duration::milliseconds(1900),
        "locked {} after the request",
        locked_at - asked
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline && !can_log_in().await {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(can_log_in().await, "the expiry lifted it");
    assert!(
        chrono::Utc::now() - asked >= chrono::Duration::milliseconds(3900),
        "the expiry counted from when the lock began"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_action_that_requires_its_announcement_does_not_act_when_it_was_not_delivered() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let hook = Receiver::start_hanging().await;
    let path = server_with(&pg, &ws, Some(&hook.url("/hook"))).await;
    let server = TestServer::start(&path).await;
    let sessions = pg.open_sessions("app", "pw", 1).await;
    let (status, answer) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "reason": "needs sign-off",
                    "notify_before": "2s", "require_announcement": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = answer["action_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(8);
    let action = loop {
        let (_, action) = server.operator_get(&format!("/v1/actions/{id}")).await;
        if action["status"] != "running" || Instant::now() > deadline {
            break action;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(action["status"], "incomplete", "{action}");
    assert!(
        action.to_string().contains("require_announcement"),
        "the reason is on record: {action}"
    );
    assert!(pg.is_alive(sessions[0]).await, "nothing was ended");
    server.stop().await;
}

#[tokio::test]
async fn cancelling_a_scheduled_lock_cancels_its_expiry_too() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    create_admin(&pg).await;
    pg.exec("ALTER ROLE sever_admin CREATEROLE").await;
    pg.create_login("app", "pw").await;
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .set("targets.main.locks", true)
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let at = chrono::Utc::now() + chrono::Duration::hours(1);
    let (status, answer) = server
        .operator_post(
            "/v1/locks",
            &json!({"login": "app", "targets": ["main"], "reason": "r", "for": "10m",
                    "not_before": at}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = answer["action_id"].as_str().unwrap().to_owned();
    let (status, report) = server
        .operator_post(
            &format!("/v1/actions/{id}/cancel"),
            &json!({"reason": "no longer"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let (_, expiries) = server.operator_get("/v1/actions?origin=unlock").await;
    let expiries = expiries["actions"].as_array().unwrap().clone();
    assert_eq!(expiries.len(), 1, "{expiries:?}");
    assert_eq!(expiries[0]["status"], "cancelled", "{expiries:?}");
    let (_, waiting) = server.operator_get("/v1/actions?status=scheduled").await;
    assert!(
        waiting["actions"].as_array().unwrap().is_empty(),
        "{waiting}"
    );
    server.stop().await;
}

/// The same waiting list, announcer and cancel on a PostgreSQL store (the production one).
#[tokio::test]
async fn scheduling_works_on_a_postgresql_store() {
    use crate::support::config::file;
    let pg = TestPostgres::start();
    pg.exec("CREATE ROLE sever_store LOGIN PASSWORD 'storepw'")
        .await;
    pg.exec("CREATE DATABASE sever_store OWNER sever_store")
        .await;
    let ws = Workspace::new();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let store = pg.url("sever_store", "storepw", "sever_store");
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .set("queue.poll_interval", "100ms")
        .set("store.url", file(&ws.secret_path("store.url", &store)))
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let sessions = pg.open_sessions("app", "pw", 1).await;
    let post = |notify_before: &str| {
        let server = &server;
        let body = json!({"login": "app", "targets": ["main"], "reason": "r",
                          "notify_before": notify_before});
        async move { server.operator_post("/v1/revocations", &body).await }
    };
    let (status, later) = post("1h").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{later}");
    let later = later["action_id"].as_str().unwrap().to_owned();
    let (_, waiting) = server.operator_get("/v1/actions?status=scheduled").await;
    assert_eq!(waiting["actions"][0]["action_id"], later, "{waiting}");
    let (status, cancelled) = server
        .operator_post(
            &format!("/v1/actions/{later}/cancel"),
            &json!({"reason": "no"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let (status, soon) = post("1s").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{soon}");
    assert!(pg.wait_gone(sessions[0], GONE).await, "acts at its time");
    let soon = soon["action_id"].as_str().unwrap();
    let action = settled(&server, soon).await;
    assert_eq!(action["status"], "completed", "{action}");
    server.stop().await;
}
