//! The events besides an action's own, from the real server on a real PostgreSQL: a login
//! lock's start and end, an enforcing policy's firing, a target down long enough.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;
use sever_testkit::receiver::Receiver;
use sever_testkit::util::free_port;

use super::{DELIVERED, OUTBOUND_SECRET, channel, config};
use crate::support::sever::{TestServer, Workspace};

/// A webhook channel to `receiver` taking `events`, one message per notice.
fn hook(ws: &Workspace, receiver: &Receiver, events: &[&str]) -> String {
    let secret = ws.secret_path("outbound.secret", OUTBOUND_SECRET);
    channel(
        "siem",
        "webhook",
        &format!(
            "url = \"{}\"\nsecret = {{ file = \"{secret}\" }}\ncoalesce = \"0s\"",
            receiver.url("/in")
        ),
        events,
    )
}

/// The bodies of every delivery of `event`.
fn of(receiver: &Receiver, event: &str) -> Vec<Value> {
    receiver
        .received()
        .iter()
        .map(|r| r.json())
        .filter(|b| b["type"] == event)
        .collect()
}

#[tokio::test]
async fn a_lock_is_told_when_it_starts_and_when_it_ends() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let receiver = Receiver::start().await;
    let channels = hook(&ws, &receiver, &["lock.started", "lock.ended"]);
    let config = config(&pg, &ws, &channels)
        .await
        .set("targets.main.locks", true)
        .toml();
    pg.exec("ALTER ROLE sever_admin CREATEROLE").await;
    let server = TestServer::start(&ws.write_config(&config)).await;

    let (status, report) = server
        .operator_post(
            "/v1/locks",
            &json!({"login": "app", "targets": ["main"], "reason": "INC-19", "for": "1s"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    let got = receiver.wait_for(2, DELIVERED).await;
    assert_eq!(got.len(), 2, "the lock, then its expiry: {got:?}");
    let started = &of(&receiver, "lock.started")[0]["data"];
    assert_eq!(started["targets"], json!(["main"]), "{started}");
    assert_eq!(started["logins"], json!(["app"]), "{started}");
    assert_eq!(started["reasons"], json!(["INC-19"]), "{started}");
    assert_eq!(
        started["action_ids"],
        json!([report["action_id"]]),
        "{started}"
    );
    assert!(started["act_at"].is_string(), "when it ends: {started}");
    let ended = &of(&receiver, "lock.ended")[0]["data"];
    assert_eq!(ended["logins"], json!(["app"]), "{ended}");
    assert_eq!(ended["targets"], json!(["main"]), "{ended}");
    server.stop().await;
}

#[tokio::test]
async fn an_enforcing_policys_firing_is_told_with_what_it_ended() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let receiver = Receiver::start().await;
    let channels = hook(&ws, &receiver, &["policy.fired"]);
    let config = config(&pg, &ws, &channels)
        .await
        .merge_toml(
            r#"[[policies]]
            name = "idle-app"
            targets = ["main"]
            selector = { logins = ["app"], states = ["idle"] }
            max_per_run = 2
            enforcement = "enforce"
            interval = "1h""#,
        )
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    pg.open_sessions("app", "pw", 12).await;

    let (status, evaluation) = server
        .operator_post("/v1/policies/idle-app/run", &json!({"execute": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{evaluation}");
    assert_eq!(evaluation["outcome"], "fired", "{evaluation}");
    let got = receiver.wait_for(1, DELIVERED).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let body = got[0].json();
    assert_eq!(body["type"], "policy.fired");
    let data = &body["data"];
    assert_eq!(data["policies"], json!(["idle-app"]), "{data}");
    assert_eq!(data["targets"], json!(["main"]), "{data}");
    assert_eq!(data["counts"]["picked"], 2, "{data}");
    assert_eq!(data["counts"]["ended"], 2, "{data}");
    assert_eq!(
        data["action_ids"],
        json!([evaluation["action"]["action_id"]])
    );
    server.stop().await;
}

#[tokio::test]
async fn a_target_down_long_enough_is_told_once() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let receiver = Receiver::start().await;
    let channels = hook(&ws, &receiver, &["target.down"]);
    let down_url = ws.secret_path(
        "down.url",
        &format!(
            "postgres://sever_admin:x@127.0.0.1:{}/postgres",
            free_port()
        ),
    );
    let config = config(&pg, &ws, &channels)
        .await
        .set("notify.target_down_after", "1s")
        .target("down", "postgres", &down_url)
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;

    let got = receiver.wait_for(1, DELIVERED).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let body = got[0].json();
    assert_eq!(body["type"], "target.down");
    assert_eq!(body["data"]["targets"], json!(["down"]), "{body}");
    assert_eq!(body["data"]["severity"], "critical");
    assert!(
        body["data"]["counts"]["down_for_seconds"].as_u64().unwrap() >= 1,
        "{body}"
    );
    // Checked every 250 ms meanwhile: still down, but told once; `main` answers throughout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), 1, "{:?}", receiver.received());
    server.stop().await;
}
