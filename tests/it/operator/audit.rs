//! The audit trail over the operator API, against the real server: `GET /v1/audit` filters
//! and pages newest first and refuses what it does not understand, the export is JSON lines
//! that match the listing, and a background verification finds an intact trail ok and an
//! edited one broken, and is itself recorded in the trail.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sever::audit::{Entry, Kind};
use uuid::Uuid;

use sever_testkit::pg::TestPostgres;

use crate::support::sever::{TOKEN, TestServer, Workspace};

/// A server on a fresh workspace.
async fn server(ws: &Workspace) -> TestServer {
    TestServer::start(&ws.write_config(&ws.base_config())).await
}

/// Appends `n` records by `actor`, alternating two kinds; those of even `i` belong to
/// `action`. Returns their sequence numbers.
async fn seed(ws: &Workspace, actor: &str, n: usize, action: Uuid) -> Vec<i64> {
    let audit = ws.audit().await;
    let entries = (0..n)
        .map(|i| {
            let kind = if i % 2 == 0 {
                Kind::SessionTerminated
            } else {
                Kind::SessionSkipped
            };
            let action = (i % 2 == 0).then_some(action);
            Entry::new(kind, actor, action, json!({"i": i}))
        })
        .collect();
    audit.append_all(entries).await.unwrap();
    let filter = sever::audit::ListFilter {
        actor: Some(actor.into()),
        ..Default::default()
    };
    let records = audit.list(&filter).await.unwrap();
    records.iter().map(|r| r.seq).collect()
}

fn seqs(page: &Value) -> Vec<i64> {
    page["records"]
        .as_array()
        .unwrap_or_else(|| panic!("no records in {page}"))
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn the_listing_filters_pages_newest_first_and_refuses_what_it_does_not_know() {
    let ws = Workspace::new();
    let server = server(&ws).await;
    let action = Uuid::now_v7();
    let mut ours = seed(&ws, "test:a", 12, action).await;
    seed(&ws, "test:b", 3, Uuid::now_v7()).await;
    ours.reverse();

    // Paged backwards from the head, five at a time, until the cursor runs out.
    let (status, first) = server.operator_get("/v1/audit?actor=test:a&limit=5").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(seqs(&first), ours[..5]);
    let record = &first["records"][0];
    assert_eq!(record["actor"], "test:a");
    assert_eq!(
        record["detail"],
        json!({"i": 11}),
        "detail is a JSON object"
    );
    assert_eq!(record["kind"], "session.skipped");
    let mut seen = Vec::new();
    let mut page = first;
    loop {
        seen.extend(seqs(&page));
        let Some(before) = page["next_before_seq"].as_i64() else {
            break;
        };
        let path = format!("/v1/audit?actor=test:a&limit=5&before_seq={before}");
        page = server.operator_get(&path).await.1;
    }
    assert_eq!(seen, ours, "every record once, newest first");

    // Kind, action and sequence bounds.
    let (_, page) = server
        .operator_get("/v1/audit?actor=test:a&kind=session.terminated")
        .await;
    assert_eq!(seqs(&page).len(), 6);
    assert!(page["next_before_seq"].is_null());
    let (_, page) = server
        .operator_get(&format!("/v1/audit?action_id={action}"))
        .await;
    let by_action: Vec<i64> = ours
        .iter()
        .copied()
        .filter(|s| (s - ours[11]) % 2 == 0)
        .collect();
    assert_eq!(seqs(&page), by_action);
    let path = format!(
        "/v1/audit?actor=test:a&after_seq={}&before_seq={}",
        ours[11], ours[0]
    );
    assert_eq!(seqs(&server.operator_get(&path).await.1), ours[1..11]);

    // Refused, never ignored.
    for bad in [
        "limit=1001",
        "limit=0",
        "limit=x",
        "colour=red",
        "action_id=not-a-uuid",
        "after_seq=-1",
        "actor=a&actor=b",
    ] {
        let (status, body) = server.operator_get(&format!("/v1/audit?{bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(code(&body), "invalid_request", "{bad}: {body}");
    }
    let (status, page) = server.operator_get("/v1/audit?limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    assert!(seqs(&page).len() >= 15);
    server.stop().await;
}

#[tokio::test]
async fn the_export_is_json_lines_matching_the_listing_across_pages() {
    let ws = Workspace::new();
    let server = server(&ws).await;
    // More than one export page (1000 records).
    let seeded = seed(&ws, "bulk", 1003, Uuid::now_v7()).await;
    seed(&ws, "other", 2, Uuid::now_v7()).await;

    let r = server
        .client
        .get(server.operator_url("/v1/audit/export?actor=bulk"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"sever-audit.jsonl\""
    );
    let text = r.text().await.unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let exported: Vec<i64> = lines.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(exported, seeded, "every record once, oldest first");

    // The same records, field for field, as the listing shows them.
    let (_, page) = server.operator_get("/v1/audit?actor=bulk&limit=1000").await;
    let mut listed = page["records"].as_array().unwrap().clone();
    listed.reverse();
    assert_eq!(lines[3..], listed[..], "the newest thousand");

    let (status, body) = server.operator_get("/v1/audit/export?limit=5").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let r = server
        .client
        .get(server.operator_url("/v1/audit/export?kind=nothing.such"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "");
    server.stop().await;
}

/// Starts a verification on `server` and polls it on `poll` (briefly) until it is no
/// longer running.
async fn verify_across(server: &TestServer, poll: &TestServer) -> Value {
    let (status, started) = server
        .operator_post("/v1/audit/verifications", &json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["status"], "running");
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["href"], format!("/v1/audit/verifications/{id}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = poll.operator_get(started["href"].as_str().unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["id"], id);
        if body["status"] != "running" {
            return body;
        }
        assert!(Instant::now() < deadline, "still running: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a verification and polls it (briefly) until it is no longer running.
async fn verify(server: &TestServer) -> Value {
    verify_across(server, server).await
}

#[tokio::test]
async fn a_background_verification_finds_an_intact_trail_ok_and_an_edited_one_broken() {
    let ws = Workspace::new();
    let server = server(&ws).await;
    let seeded = seed(&ws, "test:v", 5, Uuid::now_v7()).await;

    let done = verify(&server).await;
    assert_eq!(done["status"], "ok", "{done}");
    assert_eq!(done["requested_by"], "operator:alice");
    assert!(done["finished_at"].is_string(), "{done}");
    assert!(done["error"].is_null());
    assert_eq!(done["report"]["ok"], true);
    assert!(done["report"]["records"].as_u64().unwrap() >= 5, "{done}");
    // The check is on the record, by whoever asked.
    let records = ws.records_by("audit.verified").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].0, "operator:alice");
    assert_eq!(records[0].1["verification_id"], done["id"]);
    assert_eq!(records[0].1["ok"], true);

    // Someone with write access to the store edits a record.
    let url = format!("sqlite://{}?mode=rw", ws.path("sever.db").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE audit_records SET detail = '{\"i\":99}' WHERE seq = $1")
        .bind(seeded[2])
        .execute(&pool)
        .await
        .unwrap();
    let done = verify(&server).await;
    assert_eq!(done["status"], "broken", "{done}");
    assert_eq!(done["report"]["ok"], false);
    let problem = &done["report"]["problems"][0];
    assert_eq!(problem["seq"], seeded[2], "{done}");
    assert!(problem["what"].as_str().unwrap().contains("edited"));
    let records = ws.records_by("audit.verified").await;
    assert_eq!(records[1].1["ok"], false, "{records:?}");
    assert_eq!(records[1].1["status"], "broken");

    // Both listed, newest first; an unknown id is a 404.
    let (_, list) = server.operator_get("/v1/audit/verifications").await;
    let listed: Vec<&str> = list["verifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["status"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["broken", "ok"]);
    let path = format!("/v1/audit/verifications/{}", Uuid::now_v7());
    let (status, body) = server.operator_get(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "unknown_verification");
    server.stop().await;
}

#[tokio::test]
async fn every_audit_route_wants_the_operator_token() {
    let ws = Workspace::new();
    let server = server(&ws).await;
    let id = Uuid::now_v7();
    for (method, path) in [
        ("GET", "/v1/audit".to_owned()),
        ("GET", "/v1/audit/export".to_owned()),
        ("POST", "/v1/audit/verifications".to_owned()),
        ("GET", "/v1/audit/verifications".to_owned()),
        ("GET", format!("/v1/audit/verifications/{id}")),
    ] {
        for token in [None, Some("sev_wrong")] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = server.client.request(method, server.operator_url(&path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} {token:?}");
        }
    }
    let (_, list) = server.operator_get("/v1/audit/verifications").await;
    assert_eq!(list["verifications"], json!([]), "nothing was started");
    server.stop().await;
}

#[tokio::test]
async fn on_a_postgres_store_one_replica_lists_and_answers_for_the_others_verification() {
    let pg = TestPostgres::start();
    pg.exec("CREATE DATABASE sever_store").await;
    let url = pg.superuser_url("sever_store");
    let ws = Workspace::new();
    let config = ws.write_config(&ws.config().set("store.url", url.clone()).toml());
    let (a, b) = tokio::join!(TestServer::start(&config), TestServer::start(&config));
    let audit = sever::audit::Audit::new(
        sever::store::Store::connect(&secrecy::SecretString::from(url.clone()))
            .await
            .unwrap(),
    );
    let action = Uuid::now_v7();
    for i in 0..4 {
        let entry = Entry::new(
            Kind::SessionTerminated,
            "test:pg",
            Some(action),
            json!({"i": i}),
        );
        audit.append(entry).await.unwrap();
    }

    let (status, page) = b
        .operator_get(&format!(
            "/v1/audit?actor=test:pg&action_id={action}&limit=3"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed = seqs(&page);
    assert_eq!(listed.len(), 3);
    assert!(listed.windows(2).all(|w| w[0] > w[1]), "{listed:?}");
    let before = page["next_before_seq"].as_i64().unwrap();
    let path = format!("/v1/audit?actor=test:pg&before_seq={before}");
    assert_eq!(seqs(&b.operator_get(&path).await.1).len(), 1);

    let done = verify_across(&a, &b).await;
    assert_eq!(done["status"], "ok", "{done}");
    assert!(done["report"]["records"].as_u64().unwrap() >= 4, "{done}");
    let (_, page) = a.operator_get("/v1/audit?kind=audit.verified").await;
    assert_eq!(page["records"][0]["detail"]["verification_id"], done["id"]);
    tokio::join!(a.stop(), b.stop());
}
