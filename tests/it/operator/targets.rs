//! `GET /v1/targets`: every configured target probed now. A real PostgreSQL answers with
//! its latency, client sessions and connection limit; a target whose port nobody listens on
//! is listed unreachable with the engine's error (not its URL or password), and does not
//! hold up the answer past the probe's bound; `sever targets` says the same; the route wants
//! an operator token.

use reqwest::StatusCode;
use serde_json::Value;
use sever_testkit::pg::TestPostgres;
use sever_testkit::util::free_port;

use crate::support::sever::{ADMIN_PASSWORD, TestServer, Workspace, cli, create_admin, stdout};

/// The password in the closed target's URL: it must not appear in the answer.
const CLOSED_PASSWORD: &str = "closed-target-pw-7f3a9c";

fn target<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["targets"]
        .as_array()
        .and_then(|all| all.iter().find(|t| t["id"] == id))
        .unwrap_or_else(|| panic!("no target {id} in {list}"))
}

#[tokio::test]
async fn every_target_is_listed_with_whether_and_how_fast_it_answers() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let _sessions = pg.open_sessions("app", "pw", 3).await;
    let ws = Workspace::new();
    let closed = ws.secret_path(
        "closed.url",
        &format!(
            "postgres://sever_admin:{CLOSED_PASSWORD}@127.0.0.1:{}/postgres",
            free_port()
        ),
    );
    // The closed target's connection would be retried for a minute: only the probe's bound
    // (the termination timeout) can end it.
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .target_postgres("closed", &closed)
        .set("targets.closed.connect_timeout", "60s")
        .set("termination.timeout", "1s")
        .toml();
    let config_path = ws.write_config(&config);
    let server = TestServer::start(&config_path).await;

    let (status, list) = server.operator_get("/v1/targets").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["closed", "main"], "{list}");

    let main = target(&list, "main");
    assert_eq!(main["engine"], "postgres", "{main}");
    assert_eq!(main["reachable"], true, "{main}");
    assert!(main["latency_ms"].as_f64().unwrap() > 0.0, "{main}");
    assert!(main["sessions"].as_u64().unwrap() >= 3, "{main}");
    assert!(main["connection_limit"].as_u64().unwrap() > 0, "{main}");
    assert!(main.get("error").is_none(), "{main}");
    assert!(main["checked_at"].is_string(), "{main}");

    let closed = target(&list, "closed");
    assert_eq!(closed["engine"], "postgres", "{closed}");
    assert_eq!(closed["reachable"], false, "{closed}");
    assert!(
        !closed["error"].as_str().unwrap().is_empty(),
        "an unreachable target says why: {closed}"
    );
    for absent in ["latency_ms", "sessions", "connection_limit"] {
        assert!(closed.get(absent).is_none(), "{absent}: {closed}");
    }
    let text = list.to_string();
    assert!(!text.contains(CLOSED_PASSWORD), "{text}");
    assert!(!text.contains(ADMIN_PASSWORD), "{text}");

    // The command line probes the same way, and says a target was unreachable by its exit.
    let out = cli(&config_path, &["targets", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(target(&list, "main")["reachable"], true, "{list}");
    assert_eq!(target(&list, "closed")["reachable"], false, "{list}");
    let out = cli(&config_path, &["targets"]);
    let text = stdout(&out);
    assert!(text.contains("main (postgres): up in "), "{text}");
    assert!(text.contains("closed (postgres): unreachable: "), "{text}");
    assert!(!text.contains(CLOSED_PASSWORD), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn listing_targets_wants_an_operator_token() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = ws.target_config(ws.config(), "main", &pg).toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    for token in [None, Some("sev_not_a_configured_token")] {
        let mut request = server.client.get(server.operator_url("/v1/targets"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        let body: Value = response.json().await.unwrap();
        let code = if token.is_none() {
            "missing_token"
        } else {
            "invalid_token"
        };
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    server.stop().await;
}
