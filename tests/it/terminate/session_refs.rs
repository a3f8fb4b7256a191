//! Single sessions named by the selector's `sessions` (the console's ticked rows), through the
//! real server: on PostgreSQL a ref is the pid and its exact `backend_start` as the listing
//! shows it, so a reused pid is never hit; on MariaDB, which records no start, the id alone.

use std::time::Duration;

use crate::support::scenarios::Database;
use crate::support::sever::{
    TestServer, Workspace, cli, create_admin, pids, stderr, stdout, target_report,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::mariadb::TestMariaDb;
use sever_testkit::pg::TestPostgres;

const GONE: Duration = Duration::from_secs(5);

async fn server(pg: &TestPostgres, ws: &Workspace) -> TestServer {
    let config = ws.target_config(ws.config(), "main", pg).toml();
    TestServer::start(&ws.write_config(&config)).await
}

/// The `backend_start` the listing shows for `pid`, as sent.
async fn listed_start(server: &TestServer, pid: i32) -> String {
    let (status, listing) = server.operator_get("/v1/sessions?target=main").await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    listing["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pid"] == pid)
        .and_then(|s| s["backend_start"].as_str())
        .unwrap_or_else(|| panic!("{pid} not listed with a start: {listing}"))
        .to_owned()
}

/// `pid → (decision, rule)` of target `main`'s decisions.
fn decisions(report: &Value) -> Vec<(i64, String, Option<String>)> {
    let mut d: Vec<_> = target_report(report, "main")["decisions"]
        .as_array()
        .unwrap_or_else(|| panic!("no decisions in {report}"))
        .iter()
        .map(|d| {
            (
                d["pid"].as_i64().unwrap(),
                d["decision"].as_str().unwrap().to_owned(),
                d["rule"].as_str().map(str::to_owned),
            )
        })
        .collect();
    d.sort();
    d
}

#[tokio::test]
async fn all_logins_with_one_session_ref_ends_exactly_that_session() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let server = server(&pg, &ws).await;
    let (_a, a) = pg.session("app", "pw", "postgres", "web").await;
    let (_b, b) = pg.session("app", "pw", "postgres", "web").await;
    let (_c, c) = pg.session("app", "pw", "postgres", "web").await;
    let start = listed_start(&server, b).await;
    let body = |extra: Value| {
        let mut body = json!({
            "targets": ["main"], "reason": "console: INC-7", "all_logins": true,
            "sessions": [{"pid": b, "backend_start": start}],
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };

    let (status, preview) = server
        .operator_post("/v1/revocations", &body(json!({"dry_run": true})))
        .await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(
        pids(&preview, "main", "matched"),
        [i64::from(b)],
        "{preview}"
    );
    let (status, done) = server
        .operator_post("/v1/revocations", &body(json!({"expect_count": 1})))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(pids(&done, "main", "terminated"), [i64::from(b)], "{done}");
    assert!(pg.wait_gone(b, GONE).await);
    assert!(
        pg.is_alive(a).await && pg.is_alive(c).await,
        "the others stay"
    );
    for pid in [a, c] {
        assert!(
            decisions(&done).contains(&(
                i64::from(pid),
                "excluded".into(),
                Some("sessions".into())
            )),
            "{done}"
        );
    }
    let ended = ws.records("session.terminated").await;
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(
        ended[0]["selected_by"]["sessions"][0]["pid"], b,
        "{ended:?}"
    );
}

#[tokio::test]
async fn a_ref_whose_start_differs_ends_nothing_and_one_without_a_start_is_refused() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let server = server(&pg, &ws).await;
    let (_a, a) = pg.session("app", "pw", "postgres", "web").await;
    let (_b, b) = pg.session("app", "pw", "postgres", "web").await;
    let start: chrono::DateTime<chrono::Utc> = listed_start(&server, a).await.parse().unwrap();
    // The same pid under another start: what a reused pid looks like to the console.
    let other = (start + chrono::Duration::microseconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let body = json!({
        "targets": ["main"], "reason": "console", "all_logins": true, "dry_run": true,
        "sessions": [{"pid": a, "backend_start": other}],
    });
    let (status, preview) = server.operator_post("/v1/revocations", &body).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert!(pids(&preview, "main", "matched").is_empty(), "{preview}");
    assert!(
        decisions(&preview).contains(&(i64::from(a), "excluded".into(), Some("sessions".into()))),
        "{preview}"
    );
    let mut real = body.clone();
    real["dry_run"] = json!(false);
    real["expect_count"] = json!(0);
    let (status, done) = server.operator_post("/v1/revocations", &real).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert!(pids(&done, "main", "terminated").is_empty(), "{done}");
    assert!(pg.is_alive(a).await && pg.is_alive(b).await);

    // A pid alone could be anyone's by now: refused before anything is connected.
    for body in [
        json!({"targets": ["main"], "reason": "r", "all_logins": true, "expect_count": 1,
               "sessions": [{"pid": a}]}),
        json!({"targets": ["main"], "reason": "r", "all_logins": true, "expect_count": 1,
               "sessions": [a.to_string()]}),
    ] {
        let (status, answer) = server.operator_post("/v1/revocations", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        let text = answer.to_string();
        assert!(
            text.contains("sessions") && text.contains("backend_start") && text.contains("reused"),
            "{answer}"
        );
    }
    let (status, answer) = server
        .operator_get(&format!("/v1/sessions?sessions={a}"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    // So is a malformed one, and an empty list does not narrow all_logins.
    let (status, answer) = server
        .operator_get(&format!("/v1/sessions?sessions={a}%40yesterday"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer.to_string().contains("RFC 3339"), "{answer}");
    let (status, answer) = server
        .operator_post(
            "/v1/revocations",
            &json!({"targets": ["main"], "reason": "r", "all_logins": true, "expect_count": 0,
                    "sessions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer.to_string().contains("narrows"), "{answer}");
    assert!(pg.is_alive(a).await && pg.is_alive(b).await);
    assert!(ws.records("session.terminated").await.is_empty());
}

#[tokio::test]
async fn the_listing_shows_exactly_the_session_its_start_names() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let server = server(&pg, &ws).await;
    let (_a, a) = pg.session("app", "pw", "postgres", "web").await;
    let (_b, b) = pg.session("app", "pw", "postgres", "web").await;
    let start = listed_start(&server, b).await;
    // Microseconds: what the listing shows parses back to the instant PostgreSQL holds.
    let listed: chrono::DateTime<chrono::Utc> = start.parse().unwrap();
    let mut conn = pg.session("postgres", "", "postgres", "").await.0;
    let held: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT backend_start FROM pg_stat_activity WHERE pid = $1")
            .bind(b)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(listed, held, "{start}");
    let one = format!("{b}@{start}");
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("target", "main")
        .append_pair("sessions", &one)
        .finish();
    let (status, listing) = server.operator_get(&format!("/v1/sessions?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    let shown: Vec<i64> = listing["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(shown, [i64::from(b)], "{listing}");

    // The command line takes the same text.
    let config = ws.write_config(&ws.target_config(ws.config(), "main", &pg).toml());
    let out = cli(
        &config,
        &["sessions", "--target", "main", "--session", &one, "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let shown: Vec<i64> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(shown, [i64::from(b)], "{listed}");
    let out = cli(
        &config,
        &["sessions", "--target", "main", "--session", &b.to_string()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("reused"), "{}", stderr(&out));
    let out = cli(&config, &["sessions", "--session", "b@now"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("PID@START"), "{}", stderr(&out));
    assert!(pg.is_alive(a).await);
}

#[tokio::test]
async fn on_mariadb_a_ref_is_the_connection_id_alone() {
    sever::install_crypto_provider();
    let db = TestMariaDb::start();
    db.create_login("app", "pw0").await;
    let ws = Workspace::new();
    let config = ws
        .config()
        .merge_toml(&Database::target(&db, &ws, "main").await)
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let (_a, a) = db.session("app", "pw0").await;
    let (_b, b) = db.session("app", "pw0").await;

    // MariaDB records no start: a ref carrying one could never match.
    let (status, answer) = server
        .operator_post(
            "/v1/revocations",
            &json!({"targets": ["main"], "reason": "r", "all_logins": true, "expect_count": 1,
                    "sessions": [{"pid": b, "backend_start": "2026-12-07T01:02:03Z"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer.to_string().contains("backend_start"), "{answer}");

    let (status, listing) = server
        .operator_get(&format!("/v1/sessions?sessions={b}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    let shown: Vec<u64> = listing["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(shown, [b], "{listing}");
    let (status, done) = server
        .operator_post(
            "/v1/revocations",
            &json!({"targets": ["main"], "reason": "console", "all_logins": true,
                    "expect_count": 1, "sessions": [{"pid": b}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(pids(&done, "main", "terminated"), [b as i64], "{done}");
    assert!(db.wait_gone(b, GONE).await);
    assert!(db.is_alive(a).await, "the other connection stays");
}
