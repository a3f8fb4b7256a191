//! `sessions` on SQL Server (the TDS stand-in): a session_id is reused, so a ref carries the
//! `login_time` the listing shows as `backend_start` (server-local, converted to UTC), and
//! only the session with that id and that start is reached.

use chrono::{DateTime, Duration, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::tds::TdsStandIn;

use super::{fake, server};
use crate::support::sever::{Workspace, pids};

/// The pids a listing shows for `query`.
fn shown(body: &Value) -> Vec<i64> {
    body["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions in {body}"))
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_ref_reaches_the_session_with_its_id_and_login_time_only() {
    let db = TdsStandIn::start().await;
    db.set_utc_offset_minutes(-300);
    let ws = Workspace::new();
    db.add_session(fake(
        60,
        "app",
        Utc::now() - Duration::minutes(5),
        "sleeping",
    ));
    db.add_session(fake(
        61,
        "app",
        Utc::now() - Duration::minutes(3),
        "sleeping",
    ));
    let server = server(&db, &ws).await;
    let (status, all) = server.operator_get("/v1/sessions?target=main").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let start = all["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pid"] == 60)
        .and_then(|s| s["backend_start"].as_str())
        .unwrap_or_else(|| panic!("{all}"))
        .to_owned();
    let get = |refs: &[String]| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for r in refs {
            q.append_pair("sessions", r);
        }
        let path = format!("/v1/sessions?{}", q.finish());
        let server = &server;
        async move { server.operator_get(&path).await }
    };

    let (status, body) = get(&[format!("60@{start}")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(shown(&body), [60], "{body}");
    // Session 60 under another login_time is another session: a reused id.
    let parsed: DateTime<Utc> = start.parse().unwrap();
    let later = (parsed + Duration::seconds(1)).to_rfc3339();
    let (status, body) = get(&[format!("60@{later}")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(shown(&body).is_empty(), "{body}");
    let (status, body) = get(&["60".to_owned()]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("reused"), "{body}");

    let (status, done) = server
        .operator_post(
            "/v1/revocations",
            &json!({"targets": ["main"], "reason": "console", "all_logins": true,
                    "expect_count": 1, "sessions": [{"pid": 60, "backend_start": start}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(pids(&done, "main", "terminated"), [60], "{done}");
    let (_, left) = server.operator_get("/v1/sessions?target=main").await;
    assert_eq!(shown(&left), [61], "{left}");
    server.stop().await;
}
