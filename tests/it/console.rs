//! The operator console (`/console`) in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven by Selenium from `tests/console/drive.py`; installed by
//! scripts/ensure-chromium.sh), against the real server and a real PostgreSQL: sign-in, an
//! attacker's `application_name` shown as text, a grown selection refused, single sessions
//! previewed and revoked, the action followed to completion, its audit records read and the
//! trail verified, a scheduled action called off, a login locked and a database drained and
//! both lifted early, with no console error or CSP violation on any page. Then the database
//! is checked: exactly the ticked sessions are gone, the locked login can log in again and
//! the drained database has its limit back. Screenshots of every page are written under
//! `CARGO_TARGET_TMPDIR/console/` when the browser side fails.

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sever_testkit::pg::TestPostgres;
use sqlx::Connection;

use crate::support::sever::{TOKEN, TestServer, Workspace, create_admin};

const XSS: &str = "<img src=x onerror=alert(1)>";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
                   form-action 'self'";

/// Every console file answers with the exact CSP, no framing and no sniffing; the API
/// behind it refuses a request without the token.
#[tokio::test]
async fn the_console_is_served_with_its_security_headers() {
    let ws = Workspace::new();
    let server = TestServer::start(&ws.write_config(&ws.base_config())).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let moved = http.get(server.url("/console")).send().await.unwrap();
    assert_eq!(moved.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(moved.headers()["location"], "/console/");
    for (path, kind) in [
        ("/console/", "text/html"),
        ("/console/assets/app.js", "text/javascript"),
        ("/console/assets/sessions.js", "text/javascript"),
        ("/console/assets/console.css", "text/css"),
        ("/console/assets/icon.svg", "image/svg+xml"),
    ] {
        let response = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert_eq!(headers["content-security-policy"], CSP, "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}: {:?}",
            headers["content-type"]
        );
        // Nothing the console serves is shared with another origin.
        assert!(
            headers.get("access-control-allow-origin").is_none(),
            "{path}"
        );
    }
    let missing = http
        .get(server.url("/console/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // The page holds no data; the API it calls wants the token.
    let refused = http.get(server.url("/v1/sessions")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let refused = http
        .get(server.url("/v1/sessions"))
        .header("origin", "https://evil.example")
        .bearer_auth("sev_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn an_operator_previews_and_revokes_sessions_in_a_real_browser() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    create_admin(&pg).await;
    for login in ["app", "batch", "mallory"] {
        pg.create_login(login, "pw").await;
    }
    // Locks on, so the console can lock a login (sever's login may then change roles).
    pg.exec("ALTER ROLE sever_admin CREATEROLE").await;
    // A database to drain: sever's login is a member of its owner (`CONNECTION LIMIT`).
    pg.exec("CREATE ROLE shop_owner NOLOGIN; GRANT shop_owner TO sever_admin")
        .await;
    pg.exec("CREATE DATABASE shop OWNER shop_owner CONNECTION LIMIT 50")
        .await;
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .set("targets.main.locks", true)
        .set("queue.poll_interval", "100ms")
        .toml();
    let server = TestServer::start_split(&ws.write_config(&config)).await;

    let mut held = Vec::new();
    let mut app = Vec::new();
    for _ in 0..3 {
        let (conn, pid) = pg.session("app", "pw", "postgres", "orders-api").await;
        held.push(conn);
        app.push(pid);
    }
    let mut batch = Vec::new();
    for _ in 0..2 {
        let (conn, pid) = pg.session("batch", "pw", "postgres", "etl").await;
        held.push(conn);
        batch.push(pid);
    }
    let (conn, xss_pid) = pg.session("mallory", "pw", "postgres", XSS).await;
    held.push(conn);
    let revoke = [app[0], app[2]];
    // An action scheduled for later, for the console to call off.
    let (status, scheduled) = server
        .operator_post(
            "/v1/revocations",
            &serde_json::json!({"login": "batch", "targets": ["main"], "reason": "maintenance",
                    "not_before": chrono::Utc::now() + chrono::Duration::hours(1)}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{scheduled}");
    let scheduled = scheduled["action_id"].as_str().unwrap().to_owned();

    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console/revoke");
    let _ = std::fs::remove_dir_all(&out_dir);
    let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/drive.py");
    let run = tokio::task::spawn_blocking({
        let url = server.operator_url("");
        let grow_dsn = pg.url("batch", "pw", "postgres");
        let out_dir = out_dir.clone();
        let pids = format!("{},{}", revoke[0], revoke[1]);
        move || {
            Command::new("python3")
                .arg(driver)
                .arg("revoke")
                .env("SEVER_URL", url)
                .env("SEVER_TOKEN", TOKEN)
                .env("OUT_DIR", out_dir)
                .env("TARGET", "main")
                .env("XSS_APP_NAME", XSS)
                .env("XSS_LOGIN", "mallory")
                .env("GROW_LOGIN", "batch")
                .env("GROW_SESSIONS", "2")
                .env("GROW_DSN", grow_dsn)
                .env("REVOKE_LOGIN", "app")
                .env("REVOKE_LOGIN_SESSIONS", "3")
                .env("REVOKE_PIDS", pids)
                .env("LOCK_LOGIN", "mallory")
                .env("SCHEDULED_ACTION", scheduled)
                .env("DRAIN_DATABASE", "shop")
                .output()
                .expect("python3 runs (scripts/ensure-chromium.sh installs selenium)")
        }
    });
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser run ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser run failed (screenshots in {}):\n{stdout}\n{}",
        out_dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim()).expect("the driver's JSON");

    // Exactly the ticked sessions ended; the grown selection ended nothing; the session
    // named by the attacker's application name is untouched.
    for pid in revoke {
        assert!(
            pg.wait_gone(pid, Duration::from_secs(5)).await,
            "{pid} survived"
        );
    }
    for pid in [app[1], batch[0], batch[1], xss_pid] {
        assert!(pg.is_alive(pid).await, "{pid} was ended");
    }
    assert!(
        result["grown_error"].as_str().unwrap().contains("grew"),
        "{result}"
    );
    // The lock the console took and lifted left the login as it was.
    assert!(
        sqlx::PgConnection::connect(&pg.url("mallory", "pw", "postgres"))
            .await
            .is_ok(),
        "mallory cannot log in after the lock was lifted"
    );
    // The drain the console took and lifted left the database's limit as it was.
    let mut admin = sqlx::PgConnection::connect(&pg.superuser_url("postgres"))
        .await
        .unwrap();
    let limit: i32 =
        sqlx::query_scalar("SELECT datconnlimit FROM pg_database WHERE datname = 'shop'")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(limit, 50, "the drain did not restore the connection limit");
    let action_id = result["action_id"].as_str().unwrap();
    let records = ws
        .audit()
        .await
        .list(&sever::audit::ListFilter {
            action_id: Some(action_id.to_owned()),
            kind: Some("session.terminated".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let ended: Vec<i64> = records
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.detail).unwrap()["pid"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let mut expected: Vec<i64> = revoke.iter().map(|p| i64::from(*p)).collect();
    expected.sort_unstable();
    let mut ended = ended;
    ended.sort_unstable();
    assert_eq!(ended, expected, "{records:?}");
    drop(held);
}
