//! Each channel kind, from a real termination to a local receiver: Slack's Block Kit and
//! fallback (with what a database names escaped), a signed webhook verified by PyPI's
//! `standardwebhooks`, PagerDuty's change events and incidents.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;
use sever_testkit::receiver::{Answer, Receiver};
use sever_testkit::util::free_port;

use super::{DELIVERED, OUTBOUND_SECRET, channel, config, on_path, outbox, wait_records};
use crate::support::sever::{TestServer, Workspace, pids, sorted};

/// Slack's documented limits: a header's plain text, a section's text.
const SLACK_HEADER_MAX: usize = 150;
const SLACK_TEXT_MAX: usize = 3000;

#[tokio::test]
async fn slack_gets_block_kit_with_a_fallback_and_nothing_a_database_names_can_mention_or_link() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let receiver = Receiver::start().await;
    receiver.answer(Answer::new(200, "ok"));
    let hook_path = "/services/T0TEST/B0TEST/slackUrlIsTheCredential";
    let url = ws.secret_path("slack.url", &receiver.url(hook_path));
    let slack = channel(
        "ops",
        "slack",
        &format!(
            "url = {{ file = \"{url}\" }}\ncoalesce = \"0s\"\ninclude = [\"application_names\"]"
        ),
        &["action.completed"],
    );
    let config = config(&pg, &ws, &slack).await.toml();
    // A login and an application name an attacker chose: a mention and a link in Slack's syntax.
    pg.create_login("\"<!channel>\"", "pw").await;
    let (conn, pid) = pg
        .session(
            "<!channel>",
            "pw",
            "postgres",
            "<http://evil.example|click> <!here>",
        )
        .await;
    std::mem::forget(conn);
    let server = TestServer::start(&ws.write_config(&config)).await;

    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "<!channel>", "targets": ["main"], "reason": "INC-9 <@U0ADMIN>"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&[pid]));

    let got = receiver.wait_for(1, DELIVERED).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].path, hook_path);
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    let body = got[0].json();
    // Slack's required `text` (the fallback for notifications), and well-formed blocks.
    let text = body["text"].as_str().expect("text");
    assert!(text.starts_with("sever: Action completed"), "{text}");
    assert!(text.contains("&lt;!channel&gt;"), "{text}");
    let blocks = body["blocks"].as_array().expect("blocks");
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= SLACK_HEADER_MAX);
    assert_eq!(blocks[1]["type"], "section");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    let section = blocks[1]["text"]["text"].as_str().unwrap();
    assert!(section.chars().count() <= SLACK_TEXT_MAX);
    assert_eq!(blocks[2]["type"], "context");
    assert!(blocks[2]["elements"].as_array().unwrap().len() <= 10);
    for block in blocks {
        assert!(block["type"].is_string(), "{block}");
    }
    assert!(section.contains("`&lt;!channel&gt;`"), "{section}");
    assert!(
        section.contains("`&lt;http://evil.example|click&gt; &lt;!here&gt;`"),
        "{section}"
    );
    assert!(section.contains("&lt;@U0ADMIN&gt;"), "{section}");
    assert!(section.contains("terminated: 1"), "{section}");
    let raw = String::from_utf8_lossy(&got[0].body);
    for forbidden in ["<!channel>", "<!here>", "<http://evil", "<@U0ADMIN>"] {
        assert!(!raw.contains(forbidden), "{forbidden} reached Slack: {raw}");
    }

    let delivered = wait_records(&ws, "notification.delivered", 1).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["channel"], "ops");
    assert_eq!(delivered[0]["event"], "action.completed");
    assert_eq!(delivered[0]["attempts"], 1);
    server.stop().await;
}

/// Verifies every request with PyPI's `standardwebhooks`, and a tampered copy of the first;
/// prints what it found.
const VERIFY_PY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
given = json.load(open(sys.argv[1]))
hook = Webhook(given["secret"])
for r in given["requests"]:
    hook.verify(r["body"].encode(), r["headers"])
tampered = given["requests"][0]
try:
    hook.verify(tampered["body"].replace("main", "mane").encode(), tampered["headers"])
    print("tampered body verified")
except WebhookVerificationError:
    print("verified %d, tampered refused" % len(given["requests"]))
"#;

#[tokio::test]
async fn a_webhook_is_signed_so_the_specifications_own_python_library_verifies_it() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let receiver = Receiver::start().await;
    let secret = ws.secret_path("outbound.secret", OUTBOUND_SECRET);
    let hook = channel(
        "siem",
        "webhook",
        &format!(
            "url = \"{}\"\nsecret = {{ file = \"{secret}\" }}\ncoalesce = \"0s\"",
            receiver.url("/hooks/sever")
        ),
        &["action.started", "action.completed"],
    );
    let config = config(&pg, &ws, &hook).await.toml();
    let sessions = pg.open_sessions("app", "pw", 2).await;
    let server = TestServer::start(&ws.write_config(&config)).await;

    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "reason": "INC-3"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&sessions));
    let action_id = report["action_id"].as_str().unwrap();

    let got = receiver.wait_for(2, DELIVERED).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let mut types = Vec::new();
    for request in &got {
        assert_eq!(request.path, "/hooks/sever");
        let body = request.json();
        types.push(body["type"].as_str().unwrap().to_owned());
        assert!(body["timestamp"].is_string(), "{body}");
        let data = &body["data"];
        assert_eq!(data["action_ids"], json!([action_id]), "{body}");
        assert_eq!(data["targets"], json!(["main"]), "{body}");
        assert_eq!(data["logins"], json!(["app"]), "{body}");
        assert_eq!(data["reasons"], json!(["INC-3"]), "{body}");
        assert!(
            data.get("application_names").is_none(),
            "not opted in: {body}"
        );
        assert!(data.get("client_addrs").is_none(), "not opted in: {body}");
        assert_eq!(
            request.header("webhook-id"),
            data["notification_id"].as_str(),
            "the webhook-id is the notification's own id"
        );
        if body["type"] == "action.completed" {
            assert_eq!(data["counts"]["terminated"], 2, "{body}");
        }
    }
    types.sort();
    assert_eq!(types, ["action.completed", "action.started"]);

    let given = json!({
        "secret": OUTBOUND_SECRET,
        "requests": got.iter().map(|r| json!({
            "body": String::from_utf8(r.body.clone()).unwrap(),
            "headers": r.headers.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    });
    let input = ws.path("requests.json");
    std::fs::write(&input, given.to_string()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", VERIFY_PY])
        .arg(&input)
        .output()
        .expect("python3 (scripts/ensure-standardwebhooks.sh installs its package)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "standardwebhooks refused a delivery: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "verified 2, tampered refused");
    server.stop().await;
}

#[tokio::test]
async fn pagerduty_sends_rotations_as_change_events_and_opens_one_incident_per_failed_action() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let receiver = Receiver::start().await;
    receiver.answer(Answer::new(
        202,
        r#"{"status":"success","message":"Event processed"}"#,
    ));
    let routing_key = "R0UTINGKEYOFTHEPAGERDUTYSERVICE1";
    let key_file = ws.secret_path("pd.key", routing_key);
    let pager = channel(
        "pager",
        "pagerduty",
        &format!(
            "url = \"{}\"\nrouting_key = {{ file = \"{key_file}\" }}",
            receiver.url("")
        ),
        &["action.completed", "action.given_up", "action.incomplete"],
    );
    // A second target nobody listens at: its step is given up within the request.
    let down_url = ws.secret_path(
        "down.url",
        &format!(
            "postgres://sever_admin:x@127.0.0.1:{}/postgres",
            free_port()
        ),
    );
    let config = config(&pg, &ws, &pager)
        .await
        .set("queue.retry_for", "1s")
        .target("down", "postgres", &down_url)
        .credential("orders", &[("main", "app")])
        .toml();
    let victims = pg.open_sessions("app", "pw", 1).await;
    let server = TestServer::start(&ws.write_config(&config)).await;

    // A rotation's action completed: a change event, which pages nobody.
    let (status, report) = server
        .event(&json!({"credential": "orders", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&victims));
    let got = receiver.wait_for(1, DELIVERED).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].path, "/v2/change/enqueue");
    let change = got[0].json();
    assert_eq!(change["routing_key"], routing_key);
    let summary = change["payload"]["summary"]
        .as_str()
        .expect("payload.summary");
    assert!(
        !summary.is_empty() && summary.chars().count() <= 1024,
        "{summary}"
    );
    assert!(summary.starts_with("sever: Action completed"), "{summary}");
    assert_eq!(change["payload"]["source"], "sever");
    assert!(change["payload"]["timestamp"].is_string(), "{change}");
    assert_eq!(
        change["payload"]["custom_details"]["credentials"],
        json!(["orders"])
    );

    // A revocation whose second target never answers: given up, incomplete; one incident.
    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main", "down"], "reason": "INC-4"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "incomplete", "{report}");
    let action_id = report["action_id"].as_str().unwrap();
    let got = receiver.wait_for(3, DELIVERED).await;
    let triggers = on_path(&receiver, "/v2/enqueue");
    assert_eq!(triggers.len(), 2, "given_up and incomplete: {got:?}");
    for trigger in &triggers {
        let event = trigger.json();
        assert_eq!(event["routing_key"], routing_key);
        assert_eq!(event["event_action"], "trigger");
        assert_eq!(event["dedup_key"], format!("sever/action/{action_id}"));
        let payload = &event["payload"];
        let summary = payload["summary"].as_str().expect("payload.summary");
        assert!(!summary.is_empty() && summary.chars().count() <= 1024);
        assert_eq!(payload["source"], "sever");
        assert!(
            ["critical", "error", "warning", "info"]
                .contains(&payload["severity"].as_str().unwrap()),
            "{payload}"
        );
        assert!(payload["timestamp"].is_string(), "{payload}");
    }
    let classes: Vec<String> = triggers
        .iter()
        .map(|t| t.json()["payload"]["class"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        classes.contains(&"action.given_up".to_owned()),
        "{classes:?}"
    );
    assert!(
        classes.contains(&"action.incomplete".to_owned()),
        "{classes:?}"
    );
    // The revocation's own completion would resolve only what was triggered: nothing else
    // went out, and every row is finished.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 3, "{:?}", receiver.received());
    let rows = outbox(&ws).await;
    assert!(rows.iter().all(|r| r.2 == "delivered"), "{rows:?}");
    server.stop().await;
}
