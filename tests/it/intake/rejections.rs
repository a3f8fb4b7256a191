//! Bad input, each answered with the right status and JSON error, nothing terminated, and
//! the refusal audited; replays refused also after a restart.

use crate::support::sever::{
    SECRET, TOKEN, TestServer, WRONG_SECRET, Workspace, create_admin, now,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;

struct Case {
    name: &'static str,
    status: StatusCode,
    code: &'static str,
}

async fn expect(case: &Case, response: reqwest::Response) {
    assert_eq!(response.status(), case.status, "{}", case.name);
    let body: Value = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("{}: body is not JSON: {e}", case.name));
    assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.name);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        case.name
    );
}

#[tokio::test]
async fn bad_requests_are_refused_audited_and_execute_nothing() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .set("credentials.orders.policy", "terminate_all")
        .credential("orders", &[("main", "app")])
        .set("credentials.noop.policy", "none")
        .credential("noop", &[("main", "app")])
        .toml();
    let path = ws.write_config(&config);
    let server = TestServer::start(&path).await;
    let (_conn, victim) = pg.session("app", "pw", "postgres", "must-survive").await;

    let good = serde_json::to_vec(&json!({"credential": "orders", "kind": "revoked"})).unwrap();
    let json_body = |v: Value| serde_json::to_vec(&v).unwrap();
    let mut cases = Vec::new();

    // Deliveries signed (or not) in every wrong way: (case, body, timestamp offset, secret).
    let signed: Vec<(Case, Vec<u8>, i64, &str)> = vec![
        (
            Case {
                name: "wrong signature",
                status: StatusCode::UNAUTHORIZED,
                code: "invalid_signature",
            },
            good.clone(),
            0,
            WRONG_SECRET,
        ),
        (
            Case {
                name: "stale timestamp",
                status: StatusCode::UNAUTHORIZED,
                code: "timestamp_out_of_tolerance",
            },
            good.clone(),
            -600,
            SECRET,
        ),
        (
            Case {
                name: "future timestamp",
                status: StatusCode::UNAUTHORIZED,
                code: "timestamp_out_of_tolerance",
            },
            good.clone(),
            600,
            SECRET,
        ),
        (
            Case {
                name: "unknown credential",
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "unknown_credential",
            },
            json_body(json!({"credential": "nope", "kind": "revoked"})),
            0,
            SECRET,
        ),
        (
            Case {
                name: "malformed JSON",
                status: StatusCode::BAD_REQUEST,
                code: "malformed_json",
            },
            b"{\"credential\": ".to_vec(),
            0,
            SECRET,
        ),
        (
            Case {
                name: "misspelt field",
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_request",
            },
            json_body(
                json!({"credential": "orders", "kind": "rotated", "rotatedAt": "2020-01-01T00:00:00Z"}),
            ),
            0,
            SECRET,
        ),
        (
            Case {
                name: "unknown kind",
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_request",
            },
            json_body(json!({"credential": "orders", "kind": "expired"})),
            0,
            SECRET,
        ),
        (
            Case {
                name: "body over the limit",
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "body_too_large",
            },
            json_body(
                json!({"credential": "orders", "kind": "revoked", "reason": "x".repeat(70_000)}),
            ),
            0,
            SECRET,
        ),
    ];
    for (i, (case, body, offset, secret)) in signed.into_iter().enumerate() {
        let id = format!("msg_bad_{i}");
        expect(
            &case,
            server
                .post_signed("/v1/events", &body, &id, now() + offset, secret)
                .await,
        )
        .await;
        cases.push(case);
    }

    let case = Case {
        name: "missing headers",
        status: StatusCode::UNAUTHORIZED,
        code: "missing_header",
    };
    let r = server
        .client
        .post(server.url("/v1/events"))
        .body(good.clone())
        .send()
        .await
        .unwrap();
    expect(&case, r).await;
    cases.push(case);

    let case = Case {
        name: "signature over another body",
        status: StatusCode::UNAUTHORIZED,
        code: "invalid_signature",
    };
    let sig = sever::intake::webhook::sign(SECRET, "msg_d", now(), b"{}").unwrap();
    let r = server
        .client
        .post(server.url("/v1/events"))
        .header("webhook-id", "msg_d")
        .header("webhook-timestamp", now().to_string())
        .header("webhook-signature", sig)
        .body(good.clone())
        .send()
        .await
        .unwrap();
    expect(&case, r).await;
    cases.push(case);

    // A valid delivery (policy none: recorded, nothing terminated), then its replay.
    let noop = serde_json::to_vec(&json!({"credential": "noop", "kind": "rotated"})).unwrap();
    let ts = now();
    let first = server
        .post_signed("/v1/events?wait=true", &noop, "msg_replayed", ts, SECRET)
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["scope"], Value::Null);
    let case = Case {
        name: "replayed webhook-id",
        status: StatusCode::CONFLICT,
        code: "replayed_delivery",
    };
    expect(
        &case,
        server
            .post_signed("/v1/events", &noop, "msg_replayed", ts, SECRET)
            .await,
    )
    .await;
    cases.push(case);

    let case = Case {
        name: "operator call without token",
        status: StatusCode::UNAUTHORIZED,
        code: "missing_token",
    };
    let revoke = json!({"login": "app", "targets": "all", "reason": "test"});
    let r = server
        .client
        .post(server.url("/v1/revocations"))
        .json(&revoke)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    expect(&case, r).await;
    cases.push(case);

    let case = Case {
        name: "operator call with wrong token",
        status: StatusCode::UNAUTHORIZED,
        code: "invalid_token",
    };
    let r = server
        .client
        .post(server.url("/v1/revocations"))
        .bearer_auth("sev_not_the_token")
        .json(&revoke)
        .send()
        .await
        .unwrap();
    expect(&case, r).await;
    cases.push(case);

    let case = Case {
        name: "revocation without reason",
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_request",
    };
    let (status, body) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": "all", "reason": " "}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (case.status, case.code),
        "{body}"
    );
    cases.push(case);

    let case = Case {
        name: "revocation of a protected login",
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "protected_login",
    };
    let (status, body) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "postgres", "targets": "all", "reason": "oops"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (case.status, case.code),
        "{body}"
    );
    cases.push(case);

    let case = Case {
        name: "revocation on an unknown target",
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "unknown_target",
    };
    let (status, body) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["nope"], "reason": "x"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (case.status, case.code),
        "{body}"
    );
    cases.push(case);

    // The replay is refused after a restart too: the store remembers.
    server.stop().await;
    let server = TestServer::start(&path).await;
    let case = Case {
        name: "replay after restart",
        status: StatusCode::CONFLICT,
        code: "replayed_delivery",
    };
    expect(
        &case,
        server
            .post_signed("/v1/events", &noop, "msg_replayed", ts, SECRET)
            .await,
    )
    .await;
    cases.push(case);
    server.stop().await;

    // Nothing was terminated by any of it.
    assert!(
        pg.is_alive(victim).await,
        "a rejected request terminated a session"
    );
    let audit = ws.audit().await;
    let records = audit.list(&Default::default()).await.unwrap();
    assert!(records.iter().all(|r| r.kind != "session.terminated"));
    // Every refusal is on record, with its code and where it came from.
    let rejected: Vec<Value> = records
        .iter()
        .filter(|r| r.kind == "request.rejected")
        .map(|r| serde_json::from_str(&r.detail).unwrap())
        .collect();
    assert_eq!(rejected.len(), cases.len(), "{rejected:#?}");
    for (case, record) in cases.iter().zip(&rejected) {
        assert_eq!(record["code"], case.code, "{}", case.name);
        assert_eq!(record["status"], case.status.as_u16(), "{}", case.name);
        assert!(
            record["remote_addr"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:")
        );
    }
    // The operator's token never reaches the trail.
    assert!(records.iter().all(|r| !r.detail.contains(TOKEN)));
    assert!(audit.verify().await.unwrap().ok);
}

#[tokio::test]
async fn framework_errors_share_the_json_shape() {
    let ws = Workspace::new();
    let path = ws.write_config(&ws.base_config());
    let server = TestServer::start(&path).await;
    let r = server
        .client
        .get(server.url("/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let r = server
        .client
        .get(server.url("/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_refusals_is_recorded_then_counted_and_all_are_accounted_for() {
    use sever::http::rejections::{BURST, count};
    let ws = Workspace::new();
    let path = ws.write_config(&ws.base_config());
    let server = TestServer::start(&path).await;
    let body = serde_json::to_vec(&json!({"credential": "orders", "kind": "revoked"})).unwrap();
    let flood = 2 * BURST as usize + 5;
    for i in 0..flood {
        let r = server
            .post_signed(
                "/v1/events",
                &body,
                &format!("msg_{i}"),
                now(),
                WRONG_SECRET,
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // Another code from the same client has a burst of its own.
    let r = server
        .client
        .post(server.url("/v1/revocations"))
        .bearer_auth("sev_not_the_token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // While the window lasts: the first of the burst, each on its own, with its details.
    let rejected = ws.records("request.rejected").await;
    let signatures: Vec<&Value> = rejected
        .iter()
        .filter(|r| r["code"] == "invalid_signature")
        .collect();
    assert_eq!(signatures.len(), BURST as usize);
    assert!(signatures.iter().all(|r| r["count"] == 1));
    assert_eq!(signatures[0]["webhook_id"], "msg_0");
    assert!(rejected.iter().any(|r| r["code"] == "invalid_token"));

    // At shutdown the rest are written as one summary: who, what, how many, when, where.
    server.stop().await;
    let rejected = ws.records("request.rejected").await;
    let summaries: Vec<&Value> = rejected.iter().filter(|r| r["summary"] == true).collect();
    assert_eq!(summaries.len(), 1, "{rejected:#?}");
    let summary = summaries[0];
    assert_eq!(summary["code"], "invalid_signature");
    assert_eq!(summary["status"], 401);
    assert_eq!(summary["remote_addr"], "127.0.0.1");
    assert_eq!(summary["count"], flood - BURST as usize);
    assert_eq!(
        summary["paths"],
        json!({"POST /v1/events": flood - BURST as usize})
    );
    assert!(summary["first_at"].as_str() <= summary["last_at"].as_str());
    let total: u64 = rejected.iter().map(count).sum();
    assert_eq!(total, flood as u64 + 1, "every refusal is accounted for");
    assert!(ws.audit().await.verify().await.unwrap().ok);
}
