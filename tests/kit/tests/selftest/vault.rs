//! Self-test of the Vault stand-in: static-role reads and lists, AppRole and Kubernetes logins,
//! token renewal and lookup, and the events websocket (filtering, namespaces, dropping).

use std::time::Duration;

use chrono::{TimeZone, Timelike, Utc};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sever_testkit::vault::{Rotation, VaultStandIn, next_scheduled_rotation};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

const ROOT: &str = "root-token";

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends one request; returns the status and the JSON body (`Null` when empty).
async fn call(
    vault: &VaultStandIn,
    method: &str,
    path: &str,
    token: Option<&str>,
    namespace: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", vault.address()));
    if let Some(token) = token {
        request = request.header("X-Vault-Token", token);
    }
    if let Some(namespace) = namespace {
        request = request.header("X-Vault-Namespace", namespace);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request to the Vault stand-in");
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    (status, body)
}

fn assert_envelope(body: &Value) {
    for key in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "data",
        "wrap_info",
        "warnings",
        "auth",
    ] {
        assert!(body.get(key).is_some(), "envelope lacks {key}: {body}");
    }
    uuid::Uuid::parse_str(body["request_id"].as_str().unwrap()).expect("request_id is a UUID");
    assert_eq!(body["lease_id"], "");
}

async fn subscribe(vault: &VaultStandIn, path: &str, namespace: Option<&str>) -> Socket {
    let mut request = format!("{}{path}", vault.ws_address())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("X-Vault-Token", HeaderValue::from_static(ROOT));
    if let Some(namespace) = namespace {
        request.headers_mut().insert(
            "X-Vault-Namespace",
            HeaderValue::from_str(namespace).unwrap(),
        );
    }
    let (socket, response) = connect_async(request).await.expect("websocket handshake");
    assert_eq!(response.status(), 101);
    socket
}

/// The next text frame, parsed; panics on anything else or after 5 s.
async fn next_event(socket: &mut Socket) -> Value {
    let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
        .expect("a websocket message");
    match message {
        Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Asserts nothing arrives for a short while.
async fn assert_quiet(socket: &mut Socket) {
    if let Ok(message) = tokio::time::timeout(Duration::from_millis(300), socket.next()).await {
        panic!("expected no message, got {message:?}");
    }
}

#[tokio::test]
async fn static_role_reads_have_vaults_shape() {
    let vault = VaultStandIn::start().await;
    vault.allow_token(ROOT);
    let rotated = Utc
        .with_ymd_and_hms(2025, 11, 24, 10, 0, 0)
        .unwrap()
        .with_nanosecond(123_456_789)
        .unwrap();
    let recent = Utc::now() - chrono::Duration::seconds(60);
    vault.set_static_role(
        "",
        "database",
        "app",
        "app_user",
        "pg",
        rotated,
        Rotation::Period(3600),
    );
    vault.set_static_role(
        "team-a",
        "database",
        "app",
        "team_a_user",
        "pg-a",
        recent,
        Rotation::Schedule {
            schedule: "0 0 * * *".into(),
            window: 7200,
        },
    );
    vault.set_static_role(
        "team-b",
        "database",
        "app",
        "team_b_user",
        "pg-b",
        recent,
        Rotation::Period(3600),
    );
    vault.set_static_role(
        "",
        "database",
        "nowindow",
        "w",
        "pg",
        recent,
        Rotation::Schedule {
            schedule: "*/15 * * * *".into(),
            window: 0,
        },
    );

    // Period, root namespace.
    let (status, body) = call(
        &vault,
        "GET",
        "/v1/database/static-roles/app",
        Some(ROOT),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_envelope(&body);
    assert_eq!(
        body["data"],
        json!({
            "credential_type": "password",
            "db_name": "pg",
            "last_vault_rotation": "2025-11-24T10:00:00.123456789Z",
            "rotation_period": 3600,
            "rotation_statements": [],
            "ttl": 0,
            "username": "app_user",
        })
    );

    // A recent rotation: ttl counts down from the period.
    let (_, body) = call(
        &vault,
        "GET",
        "/v1/database/static-roles/app",
        Some(ROOT),
        Some("team-b"),
        None,
    )
    .await;
    assert_eq!(body["data"]["username"], "team_b_user");
    let ttl = body["data"]["ttl"].as_i64().unwrap();
    assert!((3538..=3541).contains(&ttl), "ttl {ttl}");

    // Schedule, selected by the namespace header.
    let (status, body) = call(
        &vault,
        "GET",
        "/v1/database/static-roles/app",
        Some(ROOT),
        Some("team-a"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let data = &body["data"];
    assert_eq!(data["username"], "team_a_user");
    assert_eq!(data["db_name"], "pg-a");
    assert_eq!(data["rotation_schedule"], "0 0 * * *");
    assert_eq!(data["rotation_window"], 7200);
    assert!(data.get("rotation_period").is_none(), "{data}");
    let last = chrono::DateTime::parse_from_rfc3339(data["last_vault_rotation"].as_str().unwrap())
        .unwrap();
    assert_eq!(last, recent);
    let now = Utc::now();
    let midnight = (now + chrono::Duration::days(1))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let expected = (midnight - now).num_seconds();
    let ttl = data["ttl"].as_i64().unwrap();
    assert!(
        (ttl - expected).abs() <= 2,
        "ttl {ttl}, expected {expected}"
    );

    // The same namespace as a path prefix, and with slashes around it.
    let (_, body) = call(
        &vault,
        "GET",
        "/v1/team-a/database/static-roles/app",
        Some(ROOT),
        None,
        None,
    )
    .await;
    assert_eq!(body["data"]["username"], "team_a_user");
    let (_, body) = call(
        &vault,
        "GET",
        "/v1/database/static-roles/app",
        Some(ROOT),
        Some("/team-a/"),
        None,
    )
    .await;
    assert_eq!(body["data"]["username"], "team_a_user");

    // rotation_window 0 is left out, as Vault does.
    let (_, body) = call(
        &vault,
        "GET",
        "/v1/database/static-roles/nowindow",
        Some(ROOT),
        None,
        None,
    )
    .await;
    assert_eq!(body["data"]["rotation_schedule"], "*/15 * * * *");
    assert!(body["data"].get("rotation_window").is_none());
    assert!(body["data"]["ttl"].as_i64().unwrap() <= 15 * 60);

    // Unknown role, unknown namespace, unknown path: 404 with no errors.
    for (path, namespace) in [
        ("/v1/database/static-roles/nope", None),
        ("/v1/database/static-roles/app", Some("team-c")),
        ("/v1/secret/data/foo", None),
    ] {
        let (status, body) = call(&vault, "GET", path, Some(ROOT), namespace, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body, json!({"errors": []}));
    }

    // No token, or an unknown one: 403.
    for token in [None, Some("hvs.unknown")] {
        let (status, body) = call(
            &vault,
            "GET",
            "/v1/database/static-roles/app",
            token,
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body, json!({"errors": ["permission denied"]}));
    }

    let requests = vault.requests();
    let first = &requests[0];
    assert_eq!(first.method, "GET");
    assert_eq!(first.path, "/v1/database/static-roles/app");
    assert_eq!(first.namespace, "");
    assert_eq!(first.token.as_deref(), Some(ROOT));
    assert_eq!(requests[2].namespace, "team-a");
    assert_eq!(
        requests.last().unwrap().token.as_deref(),
        Some("hvs.unknown")
    );
}

#[tokio::test]
async fn static_roles_list_both_ways() {
    let vault = VaultStandIn::start().await;
    vault.allow_token(ROOT);
    for name in ["b-role", "a-role"] {
        vault.set_static_role(
            "",
            "database",
            name,
            "u",
            "pg",
            Utc::now(),
            Rotation::Period(60),
        );
    }
    vault.set_static_role(
        "team-a",
        "database",
        "other",
        "u",
        "pg",
        Utc::now(),
        Rotation::Period(60),
    );

    let (status, body) = call(
        &vault,
        "LIST",
        "/v1/database/static-roles",
        Some(ROOT),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_envelope(&body);
    assert_eq!(body["data"], json!({"keys": ["a-role", "b-role"]}));

    let (status, body) = call(
        &vault,
        "GET",
        "/v1/database/static-roles?list=true",
        Some(ROOT),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"], json!({"keys": ["a-role", "b-role"]}));

    let (_, body) = call(
        &vault,
        "LIST",
        "/v1/database/static-roles/",
        Some(ROOT),
        Some("team-a"),
        None,
    )
    .await;
    assert_eq!(body["data"], json!({"keys": ["other"]}));

    // An empty list is a 404, as in Vault.
    let (status, _) = call(
        &vault,
        "LIST",
        "/v1/other-db/static-roles",
        Some(ROOT),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = call(
        &vault,
        "LIST",
        "/v1/database/static-roles",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    assert!(vault.remove_static_role("", "database", "a-role"));
    let (_, body) = call(
        &vault,
        "LIST",
        "/v1/database/static-roles",
        Some(ROOT),
        None,
        None,
    )
    .await;
    assert_eq!(body["data"], json!({"keys": ["b-role"]}));
    let recorded = vault.requests();
    assert_eq!(recorded[0].method, "LIST");
    assert_eq!(recorded[1].path, "/v1/database/static-roles?list=true");
}

#[tokio::test]
async fn logins_issue_tokens_that_work_and_renew() {
    let vault = VaultStandIn::start().await;
    vault.allow_approle("approle", "role-1", "secret-1");
    vault.allow_kubernetes("kubernetes", "sever", "jwt-1");
    vault.set_static_role(
        "",
        "database",
        "app",
        "u",
        "pg",
        Utc::now(),
        Rotation::Period(60),
    );

    let (status, body) = call(
        &vault,
        "POST",
        "/v1/auth/approle/login",
        None,
        None,
        Some(json!({"role_id": "role-1", "secret_id": "wrong"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"errors": ["invalid role or secret ID"]}));

    let (status, body) = call(
        &vault,
        "POST",
        "/v1/auth/approle/login",
        None,
        None,
        Some(json!({"role_id": "role-1", "secret_id": "secret-1"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_envelope(&body);
    assert_eq!(body["data"], Value::Null);
    let auth = &body["auth"];
    let token = auth["client_token"].as_str().unwrap().to_string();
    assert!(token.starts_with("hvs."), "{token}");
    assert_eq!(auth["lease_duration"], 3600);
    assert_eq!(auth["renewable"], true);
    assert_eq!(auth["policies"], json!(["default", "sever"]));
    assert_eq!(auth["token_policies"], json!(["default", "sever"]));
    assert_eq!(auth["token_type"], "service");
    assert_eq!(auth["orphan"], true);
    assert_eq!(auth["mfa_requirement"], Value::Null);
    assert_eq!(auth["num_uses"], 0);
    assert!(auth["accessor"].as_str().is_some_and(|a| !a.is_empty()));
    assert!(auth["entity_id"].as_str().is_some_and(|a| !a.is_empty()));
    assert!(auth["metadata"].is_object());

    // The issued token works.
    let (status, _) = call(
        &vault,
        "GET",
        "/v1/database/static-roles/app",
        Some(&token),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(
        &vault,
        "GET",
        "/v1/auth/token/lookup-self",
        Some(&token),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let data = &body["data"];
    assert_eq!(data["id"], token.as_str());
    assert_eq!(data["accessor"], auth["accessor"]);
    assert_eq!(data["creation_ttl"], 3600);
    assert_eq!(data["renewable"], true);
    assert_eq!(data["type"], "service");
    assert_eq!(data["policies"], json!(["default", "sever"]));
    assert!((3598..=3600).contains(&data["ttl"].as_i64().unwrap()));
    chrono::DateTime::parse_from_rfc3339(data["expire_time"].as_str().unwrap()).unwrap();

    // Renewal keeps the token and is counted.
    assert_eq!(vault.renewals(), 0);
    for _ in 0..2 {
        let (status, body) = call(
            &vault,
            "POST",
            "/v1/auth/token/renew-self",
            Some(&token),
            None,
            Some(json!({"increment": "1h"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["auth"]["client_token"], token.as_str());
        assert_eq!(body["auth"]["lease_duration"], 3600);
    }
    assert_eq!(vault.renewals(), 2);
    let (status, _) = call(
        &vault,
        "POST",
        "/v1/auth/token/renew-self",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(vault.renewals(), 2);

    // Kubernetes.
    let (status, _) = call(
        &vault,
        "POST",
        "/v1/auth/kubernetes/login",
        None,
        None,
        Some(json!({"role": "sever", "jwt": "wrong"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &vault,
        "POST",
        "/v1/auth/kubernetes/login",
        None,
        None,
        Some(json!({"role": "nope", "jwt": "jwt-1"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = call(
        &vault,
        "POST",
        "/v1/auth/kubernetes/login",
        None,
        None,
        Some(json!({"role": "sever", "jwt": "jwt-1"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let kube_token = body["auth"]["client_token"].as_str().unwrap().to_string();
    assert_ne!(kube_token, token);
    assert_eq!(body["auth"]["metadata"]["role"], "sever");
    // AppRole credentials are not accepted on the Kubernetes mount.
    let (status, _) = call(
        &vault,
        "POST",
        "/v1/auth/kubernetes/login",
        None,
        None,
        Some(json!({"role_id": "role-1", "secret_id": "secret-1"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A revoked token stops working.
    vault.revoke_token(&token);
    let (status, _) = call(
        &vault,
        "GET",
        "/v1/auth/token/lookup-self",
        Some(&token),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let login = &vault.requests()[1];
    assert_eq!(
        (
            login.method.as_str(),
            login.path.as_str(),
            login.token.as_deref()
        ),
        ("POST", "/v1/auth/approle/login", None)
    );
}

#[test]
fn events_are_shaped_like_vaults() {
    let event = VaultStandIn::event(
        "database/rotate",
        "database",
        "database",
        json!({"name": "app", "modified": true, "attempt": 1}),
        Some("team-a/"),
    );
    let id = event["id"].as_str().unwrap();
    uuid::Uuid::parse_str(id).unwrap();
    chrono::DateTime::parse_from_rfc3339(event["time"].as_str().unwrap()).unwrap();
    let expected = json!({
        "id": id,
        "source": "https://vaultproject.io/",
        "specversion": "1.0",
        "type": "database/rotate",
        "data": {
            "event": {"id": id, "metadata": {"name": "app", "modified": "true", "attempt": "1"}},
            "event_type": "database/rotate",
            "plugin_info": {
                "mount_class": "secret",
                "mount_accessor": "database_1a2b3c4d",
                "mount_path": "database/",
                "plugin": "database",
            },
            "namespace": "team-a/",
        },
        "datacontentype": "application/cloudevents",
        "time": event["time"],
    });
    assert_eq!(event, expected);

    let root = VaultStandIn::event("kv-v2/data-write", "secret/", "kv", json!({}), None);
    assert!(root["data"].get("namespace").is_none());
    assert_eq!(root["data"]["plugin_info"]["mount_path"], "secret/");
    assert_eq!(root["data"]["plugin_info"]["mount_accessor"], "kv_1a2b3c4d");
}

#[tokio::test]
async fn websocket_subscribers_get_matching_events_until_dropped() {
    let vault = VaultStandIn::start().await;
    vault.allow_token(ROOT);

    // The handshake needs a token.
    let request = format!(
        "{}/v1/sys/events/subscribe/database/*?json=true",
        vault.ws_address()
    )
    .into_client_request()
    .unwrap();
    let refused = connect_async(request).await.expect_err("no token");
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected an HTTP 403, got {other}"),
    }
    assert_eq!(vault.subscribers(), 0);

    let mut database = subscribe(
        &vault,
        "/v1/sys/events/subscribe/database/*?json=true",
        None,
    )
    .await;
    // URL-encoded event type, in a namespace.
    let mut team_a = subscribe(
        &vault,
        "/v1/sys/events/subscribe/database%2F%2A?json=true",
        Some("team-a"),
    )
    .await;
    // Root plus a child namespace; exact type.
    let mut both = subscribe(
        &vault,
        "/v1/sys/events/subscribe/database/rotate?json=true&namespaces=team-a",
        None,
    )
    .await;
    assert_eq!(vault.subscribers(), 3);

    let kv = VaultStandIn::event(
        "kv-v2/data-write",
        "secret",
        "kv",
        json!({"path": "secret/data/app"}),
        None,
    );
    let rotate = VaultStandIn::event(
        "database/rotate",
        "database",
        "database",
        json!({"name": "app"}),
        None,
    );
    let rotate_a = VaultStandIn::event(
        "database/rotate",
        "database",
        "database",
        json!({"name": "app"}),
        Some("team-a"),
    );
    vault.publish(&kv);
    vault.publish(&rotate);

    // The kv-v2 event was published first but only the database one arrives.
    assert_eq!(next_event(&mut database).await, rotate);
    assert_eq!(next_event(&mut both).await, rotate);
    assert_quiet(&mut team_a).await;

    vault.publish(&rotate_a);
    assert_eq!(next_event(&mut team_a).await, rotate_a);
    assert_eq!(next_event(&mut both).await, rotate_a);
    assert_quiet(&mut database).await;

    // A plain json=false subscription is refused (the stand-in does not speak protobuf).
    let mut request = format!("{}/v1/sys/events/subscribe/database/*", vault.ws_address())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("X-Vault-Token", HeaderValue::from_static(ROOT));
    assert!(connect_async(request).await.is_err());

    // Dropping closes every socket.
    vault.drop_subscribers();
    assert_eq!(vault.subscribers(), 0);
    for socket in [&mut database, &mut team_a, &mut both] {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a Close frame within 5 s");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected a Close frame, got {other:?}"),
        }
        let after = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("the stream ends within 5 s");
        assert!(
            matches!(after, None | Some(Err(_))),
            "expected the end of the stream, got {after:?}"
        );
    }

    // A new subscriber can connect again, and a client that leaves is no longer counted.
    let mut again = subscribe(
        &vault,
        "/v1/sys/events/subscribe/database/*?json=true",
        None,
    )
    .await;
    assert_eq!(vault.subscribers(), 1);
    vault.publish(&rotate);
    assert_eq!(next_event(&mut again).await, rotate);
    again.close(None).await.unwrap();
    drop(again);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while vault.subscribers() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "client close not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let subscribe_request = vault
        .requests()
        .into_iter()
        .find(|r| r.path.contains("database%2F%2A"))
        .unwrap();
    assert_eq!(subscribe_request.namespace, "team-a");
    assert_eq!(subscribe_request.token.as_deref(), Some(ROOT));
}

#[test]
fn cron_schedules_evaluate_like_vaults() {
    // Tuesday 2026-11-24 23:30:40 UTC.
    let at = Utc.with_ymd_and_hms(2026, 11, 24, 23, 30, 40).unwrap();
    let next = |schedule: &str| next_scheduled_rotation(schedule, at).map(|t| t.to_rfc3339());
    let utc = |y, mo, d, h, mi| {
        Some(
            Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
                .unwrap()
                .to_rfc3339(),
        )
    };
    assert_eq!(next("0 0 * * *"), utc(2026, 11, 25, 0, 0));
    assert_eq!(next("*/15 * * * *"), utc(2026, 11, 24, 23, 45));
    assert_eq!(next("30 23 * * *"), utc(2026, 11, 25, 23, 30));
    assert_eq!(next("31 23 * * *"), utc(2026, 11, 24, 23, 31));
    assert_eq!(next("30 2 * * MON"), utc(2026, 11, 30, 2, 30));
    assert_eq!(next("0 12 1 jan *"), utc(2027, 1, 1, 12, 0));
    assert_eq!(next("0 0 * * 7"), utc(2026, 11, 29, 0, 0));
    assert_eq!(next("5-20/5 1,3 * * *"), utc(2026, 11, 25, 1, 5));
    // Day of month and day of week both restricted: either matches (Friday the 27th first).
    assert_eq!(next("0 0 13 * FRI"), utc(2026, 11, 27, 0, 0));
    // Day of week starred: the day of month alone decides.
    assert_eq!(next("0 0 13 * *"), utc(2026, 12, 13, 0, 0));
    assert_eq!(next("0 0 29 2 *"), utc(2028, 2, 29, 0, 0));
    for bad in [
        "",
        "* * * *",
        "60 * * * *",
        "* * * * * *",
        "*/0 * * * *",
        "0 0 * foo *",
    ] {
        assert_eq!(next(bad), None, "{bad:?}");
    }
}

/// vaultrs, which sever logs in and renews with, accepts the stand-in's bodies.
#[tokio::test]
async fn vaultrs_understands_the_stand_in() {
    use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};

    let vault = VaultStandIn::start().await;
    vault.allow_approle("approle", "role-1", "secret-1");
    vault.allow_kubernetes("k8s", "sever", "jwt-1");
    vault.set_static_role(
        "team-a",
        "database",
        "app",
        "app_user",
        "pg",
        Utc::now(),
        Rotation::Period(3600),
    );
    let client = |token: &str| {
        VaultClient::new(
            VaultClientSettingsBuilder::default()
                .address(vault.address())
                .token(token)
                .namespace(Some("team-a".into()))
                .build()
                .unwrap(),
        )
        .unwrap()
    };

    let anonymous = client("");
    let auth = vaultrs::auth::approle::login(&anonymous, "approle", "role-1", "secret-1")
        .await
        .expect("approle login");
    assert_eq!(auth.lease_duration, 3600);
    assert!(auth.renewable);
    let error = vaultrs::auth::approle::login(&anonymous, "approle", "role-1", "nope")
        .await
        .expect_err("wrong secret");
    assert!(
        matches!(
            error,
            vaultrs::error::ClientError::APIError { code: 400, .. }
        ),
        "{error:?}"
    );
    let k8s = vaultrs::auth::kubernetes::login(&anonymous, "k8s", "sever", "jwt-1")
        .await
        .expect("kubernetes login");
    assert!(k8s.client_token.starts_with("hvs."));

    let authed = client(&auth.client_token);
    let renewed = authed.renew(None).await.expect("renew-self");
    assert_eq!(renewed.client_token, auth.client_token);
    assert_eq!(vault.renewals(), 1);
    let lookup = authed.lookup().await.expect("lookup-self");
    assert_eq!(lookup.id, auth.client_token);
    assert!((3598..=3600).contains(&lookup.ttl), "{}", lookup.ttl);

    let role = vaultrs::database::static_role::read(&authed, "database", "app")
        .await
        .expect("static role read");
    assert_eq!(role.username, "app_user");
    assert_eq!(role.rotation_period, 3600);
    let list = vaultrs::database::static_role::list(&authed, "database")
        .await
        .expect("static role list");
    assert_eq!(list.keys, ["app"]);
    assert!(
        vault
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/v1/database"))
            .all(|r| r.namespace == "team-a")
    );
}
