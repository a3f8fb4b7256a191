//! `GET /v1/actions` through the real server: filters by origin, actor, status and time,
//! newest first, bounded pages linked by a cursor, and refusals for values it does not know.

use crate::support::sever::{TestServer, Workspace, create_admin};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;

fn ids(page: &Value) -> Vec<String> {
    page["actions"]
        .as_array()
        .unwrap_or_else(|| panic!("no actions in {page}"))
        .iter()
        .map(|a| a["action_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn actions_are_listed_newest_first_filtered_and_paged() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .credential("orders", &[("main", "app")])
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let since = chrono::Utc::now().to_rfc3339();
    let mut revocations = Vec::new();
    for n in 0..3 {
        let (status, report) = server
            .operator_post(
                "/v1/revocations",
                &json!({"login": "app", "targets": ["main"], "reason": format!("r{n}"),
                        "dry_run": true}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{report}");
        revocations.push(report["action_id"].as_str().unwrap().to_owned());
    }
    let (status, event) = server
        .event(&json!({"credential": "orders", "kind": "rotated"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    let event_id = event["action_id"].as_str().unwrap().to_owned();

    let (status, all) = server.operator_get("/v1/actions").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let mut newest_first = revocations.clone();
    newest_first.push(event_id.clone());
    newest_first.reverse();
    assert_eq!(ids(&all), newest_first);
    assert_eq!(all["next"], Value::Null);
    assert_eq!(all["actions"][0]["origin"], "event");
    assert_eq!(all["actions"][0]["actor"], "webhook");
    assert_eq!(all["actions"][1]["origin"], "revocation");
    assert_eq!(all["actions"][1]["actor"], "operator:alice");
    assert_eq!(all["actions"][1]["status"], "completed");

    let (_, only) = server.operator_get("/v1/actions?origin=revocation").await;
    let mut newest = revocations.clone();
    newest.reverse();
    assert_eq!(ids(&only), newest);
    let (_, by_actor) = server.operator_get("/v1/actions?actor=webhook").await;
    assert_eq!(ids(&by_actor), std::slice::from_ref(&event_id));
    let (_, none) = server.operator_get("/v1/actions?status=running").await;
    assert_eq!(ids(&none), Vec::<String>::new());
    let since = url::form_urlencoded::byte_serialize(since.as_bytes()).collect::<String>();
    let (_, recent) = server
        .operator_get(&format!("/v1/actions?since={since}&origin=event"))
        .await;
    assert_eq!(ids(&recent), [event_id]);

    // Pages of two, linked by `next`.
    let (_, first) = server
        .operator_get("/v1/actions?origin=revocation&limit=2")
        .await;
    assert_eq!(ids(&first), newest[..2]);
    let next = first["next"].as_str().unwrap().to_owned();
    assert_eq!(next, newest[1]);
    let (_, second) = server
        .operator_get(&format!(
            "/v1/actions?origin=revocation&limit=2&before={next}"
        ))
        .await;
    assert_eq!(ids(&second), newest[2..]);
    assert_eq!(second["next"], Value::Null);

    for bad in [
        "status=done",
        "origin=cron",
        "limit=0",
        "limit=501",
        "since=yesterday",
        "before=17",
        "page=2",
    ] {
        let (status, body) = server.operator_get(&format!("/v1/actions?{bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
}
