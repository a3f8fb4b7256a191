//! Session policies through the real server, against a real PostgreSQL: an observing policy
//! reports and ends nothing; a connection threshold ends nothing below it and the oldest
//! victims above it, at most `max_per_run`; a run never ends more than a quarter of a
//! target's client sessions; a policy that keeps ending sessions pauses itself until an
//! operator resumes it; two replicas on one PostgreSQL store evaluate a policy once per
//! interval between them; the routes refuse bad tokens, unknown names and bad bodies.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;

use crate::support::config::{ConfigBuilder, file};
use crate::support::sever::{
    TOKEN, TestServer, Workspace, cli, create_admin, pids, sorted, stdout,
};

const GONE: Duration = Duration::from_secs(5);

/// A target `main` with login `app`, and `policy` (TOML inside `[[policies]]`).
async fn with_policy(pg: &TestPostgres, ws: &Workspace, policy: &str) -> ConfigBuilder {
    create_admin(pg).await;
    pg.create_login("app", "pw").await;
    ws.target_config(ws.config(), "main", pg)
        .set("queue.poll_interval", "100ms")
        .merge_toml(&format!("[[policies]]\n{policy}\n"))
}

async fn run(server: &TestServer, name: &str, execute: bool) -> Value {
    let (status, evaluation) = server
        .operator_post(
            &format!("/v1/policies/{name}/run"),
            &json!({"execute": execute}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{evaluation}");
    evaluation
}

async fn records(ws: &Workspace, kind: &str) -> Vec<(String, Value)> {
    ws.records_by(kind).await
}

fn threshold(evaluation: &Value) -> &Value {
    &evaluation["targets"][0]["threshold"]
}

fn listed<'a>(policies: &'a Value, name: &str) -> &'a Value {
    policies["policies"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no policy {name} in {policies}"))
}

#[tokio::test]
async fn an_observing_policy_reports_what_it_would_end_and_ends_nothing() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = with_policy(
        &pg,
        &ws,
        r#"name = "idle-app"
        targets = ["main"]
        selector = { logins = ["app"], states = ["idle"] }
        max_per_run = 2
        interval = "1h""#,
    )
    .await
    .toml();
    let config_path = ws.write_config(&config);
    let server = TestServer::start(&config_path).await;
    let sessions = pg.open_sessions("app", "pw", 12).await;

    let evaluation = run(&server, "idle-app", true).await;
    assert_eq!(evaluation["outcome"], "observed", "{evaluation}");
    let report = &evaluation["action"];
    assert_eq!(report["dry_run"], true, "{report}");
    assert_eq!(report["origin"], "policy");
    assert_eq!(report["policy"], "idle-app");
    // The two oldest, as an enforcing run would take them.
    assert_eq!(
        pids(report, "main", "matched"),
        sorted(&sessions[..2]),
        "{report}"
    );
    for pid in &sessions {
        assert!(pg.is_alive(*pid).await, "observing ends nothing");
    }
    // One summary record for the target, not one per session.
    let summaries = records(&ws, "policy.target").await;
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    assert_eq!(summaries[0].0, "policy:idle-app");
    assert_eq!(summaries[0].1["observe"], true);
    assert_eq!(summaries[0].1["spared"]["over_limit"], 10, "{summaries:?}");
    assert!(ws.records("session.would_terminate").await.is_empty());
    assert!(ws.records("session.skipped").await.is_empty());

    let (status, policies) = server.operator_get("/v1/policies").await;
    assert_eq!(status, StatusCode::OK, "{policies}");
    let p = listed(&policies, "idle-app");
    assert_eq!(p["enforcement"], "observe");
    assert_eq!(p["last_evaluation"]["outcome"], "observed", "{p}");
    assert_eq!(p["last_evaluation"]["matched"], 2, "{p}");
    assert!(p["next_evaluation"].is_string(), "scheduled at start: {p}");

    // The CLI's run is a dry run without --execute.
    let out = cli(&config_path, &["policy", "run", "idle-app"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("DRY RUN"), "{}", stdout(&out));
    for pid in &sessions {
        assert!(pg.is_alive(*pid).await);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_connection_threshold_ends_nothing_below_it_and_the_oldest_above_it() {
    let pg = TestPostgres::start();
    // 25 - 3 reserved = 22 slots for clients; above 80% is 18 clients or more.
    pg.exec("ALTER SYSTEM SET max_connections = 25").await;
    pg.restart();
    let ws = Workspace::new();
    let config = with_policy(
        &pg,
        &ws,
        r#"name = "crowded"
        targets = ["main"]
        selector = { logins = ["app"], states = ["idle"] }
        when = { connections_above_percent_of_max = 80 }
        victims = "all"
        max_per_run = 3
        enforcement = "enforce"
        interval = "1h""#,
    )
    .await
    .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let mut sessions = pg.open_sessions("app", "pw", 5).await;

    let below = run(&server, "crowded", true).await;
    assert_eq!(below["outcome"], "below_threshold", "{below}");
    assert_eq!(threshold(&below)["limit"], 22, "{below}");
    assert_eq!(threshold(&below)["met"], false, "{below}");
    assert!(
        below.get("action").is_none(),
        "no match, no action: {below}"
    );
    for pid in &sessions {
        assert!(pg.is_alive(*pid).await, "nothing ends below the threshold");
    }

    sessions.extend(pg.open_sessions("app", "pw", 12).await);
    let above = run(&server, "crowded", true).await;
    assert_eq!(above["outcome"], "fired", "{above}");
    assert_eq!(threshold(&above)["met"], true, "{above}");
    let report = &above["action"];
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(
        pids(report, "main", "terminated"),
        sorted(&sessions[..3]),
        "the three oldest, no more: {report}"
    );
    for pid in &sessions[..3] {
        assert!(pg.wait_gone(*pid, GONE).await);
    }
    for pid in &sessions[3..] {
        assert!(pg.is_alive(*pid).await, "beyond max_per_run stays");
    }
    let ended = records(&ws, "session.terminated").await;
    assert_eq!(ended.len(), 3, "{ended:?}");
    assert!(ended.iter().all(|(actor, _)| actor == "policy:crowded"));
    server.stop().await;
}

#[tokio::test]
async fn a_run_ends_at_most_a_quarter_and_a_policy_that_keeps_firing_pauses() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = with_policy(
        &pg,
        &ws,
        r#"name = "sweep-idle"
        targets = ["main"]
        selector = { logins = ["app"], states = ["idle"] }
        max_per_run = 100
        enforcement = "enforce"
        pause_after = 2
        interval = "1h""#,
    )
    .await
    .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let sessions = pg.open_sessions("app", "pw", 12).await;

    let mut ended = Vec::new();
    for round in 0..2 {
        let evaluation = run(&server, "sweep-idle", true).await;
        assert_eq!(evaluation["outcome"], "fired", "{evaluation}");
        let t = threshold(&evaluation);
        let cap = t["cap"].as_u64().unwrap();
        assert_eq!(cap, t["clients"].as_u64().unwrap() / 4, "{evaluation}");
        let report = &evaluation["action"];
        let terminated = pids(report, "main", "terminated");
        assert_eq!(terminated.len() as u64, cap, "a quarter, no more: {report}");
        assert!((1..12).contains(&cap), "{evaluation}");
        for pid in &terminated {
            assert!(pg.wait_gone(*pid as i32, GONE).await);
        }
        ended.extend(terminated);
        assert_eq!(
            evaluation["paused_now"].as_bool().unwrap_or(false),
            round == 1,
            "pauses after its second run in a row: {evaluation}"
        );
    }
    let paused = records(&ws, "policy.paused").await;
    assert_eq!(paused.len(), 1, "{paused:?}");
    assert_eq!(paused[0].0, "policy:sweep-idle");

    let alive: Vec<i32> = sessions
        .iter()
        .copied()
        .filter(|p| !ended.contains(&i64::from(*p)))
        .collect();
    let evaluation = run(&server, "sweep-idle", true).await;
    assert_eq!(evaluation["outcome"], "paused", "{evaluation}");
    for pid in &alive {
        assert!(pg.is_alive(*pid).await, "a paused policy ends nothing");
    }
    let (_, policies) = server.operator_get("/v1/policies").await;
    assert!(
        listed(&policies, "sweep-idle")["paused"].is_object(),
        "{policies}"
    );

    let (status, resumed) = server
        .operator_post("/v1/policies/sweep-idle/resume", &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["resumed"], true);
    assert_eq!(records(&ws, "policy.resumed").await[0].0, "operator:alice");
    let evaluation = run(&server, "sweep-idle", true).await;
    assert_eq!(evaluation["outcome"], "fired", "resumed: {evaluation}");
    server.stop().await;
}

#[tokio::test]
async fn two_replicas_on_one_store_evaluate_a_policy_once_per_interval() {
    let pg = TestPostgres::start();
    pg.exec("CREATE ROLE sever_store LOGIN PASSWORD 'storepw'")
        .await;
    pg.exec("CREATE DATABASE sever_store OWNER sever_store")
        .await;
    let ws = Workspace::new();
    let store = pg.url("sever_store", "storepw", "sever_store");
    let config = with_policy(
        &pg,
        &ws,
        r#"name = "watch"
        targets = ["main"]
        selector = { logins = ["app"] }
        interval = "1s""#,
    )
    .await
    .set("store.url", file(&ws.secret_path("store.url", &store)))
    .toml();
    let path = ws.write_config(&config);
    let _sessions = pg.open_sessions("app", "pw", 8).await;
    let first = TestServer::start(&path).await;
    let second = TestServer::start(&path).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    first.stop().await;
    second.stop().await;

    let server = TestServer::start(&path).await;
    let (status, page) = server.operator_get("/v1/actions?origin=policy").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut times: Vec<chrono::DateTime<chrono::Utc>> = page["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["created_at"].as_str().unwrap().parse().unwrap())
        .collect();
    times.sort();
    // Evaluations every second for about four seconds: each ran on one replica, so no two
    // are closer than the interval allows (each replica alone would give pairs ms apart).
    assert!(times.len() >= 2, "{page}");
    assert!(times.len() <= 5, "{page}");
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= chrono::Duration::milliseconds(800),
            "two evaluations {gap} apart: {page}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn policy_routes_refuse_bad_tokens_unknown_names_and_bad_bodies() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = with_policy(
        &pg,
        &ws,
        r#"name = "idle-app"
        targets = ["main"]
        selector = { logins = ["app"] }
        interval = "1h""#,
    )
    .await
    .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let _sessions = pg.open_sessions("app", "pw", 2).await;
    let post = |path: &str, token: &str, body: &str| {
        server
            .client
            .post(server.operator_url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let r = post("/v1/policies/idle-app/run", "wrong", "{}")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = post("/v1/policies/nope/run", TOKEN, "{}").await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = post("/v1/policies/idle-app/run", TOKEN, "{\"execute\":")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = post("/v1/policies/idle-app/run", TOKEN, "{\"exceute\":true}")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // None of those evaluated anything.
    assert!(ws.records("policy.target").await.is_empty());
    let r = post("/v1/policies/idle-app/run", TOKEN, "").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "an empty body is a dry run");
    let evaluation: Value = r.json().await.unwrap();
    assert_eq!(evaluation["outcome"], "observed", "{evaluation}");
    server.stop().await;
}

#[tokio::test]
async fn a_windowed_policy_enforces_only_inside_one_of_its_windows() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let enforcing = |name: &str, windows: &str| {
        format!(
            r#"[[policies]]
            name = "{name}"
            targets = ["main"]
            selector = {{ logins = ["app"], states = ["idle"] }}
            max_per_run = 1
            enforcement = "enforce"
            windows = {windows}
            interval = "1h"
            "#
        )
    };
    // One TOML text: merging would replace the [[policies]] array, not extend it.
    let policies = format!(
        r#"name = "observer"
        targets = ["main"]
        selector = {{ logins = ["app"] }}
        windows = ["closed"]
        interval = "1h"
        [[windows]]
        name = "closed"
        [[windows.time_intervals]]
        years = ["2020"]
        [[windows]]
        name = "open"
        [[windows.time_intervals]]
        times = [{{ start_time = "00:00", end_time = "24:00" }}]
        {}
        {}"#,
        enforcing("nightly", r#"["closed"]"#),
        enforcing("any", r#"["closed", "open"]"#),
    );
    let config = with_policy(&pg, &ws, &policies).await.toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let sessions = pg.open_sessions("app", "pw", 8).await;

    let outside = run(&server, "nightly", true).await;
    assert_eq!(outside["outcome"], "outside_window", "{outside}");
    for pid in &sessions {
        assert!(pg.is_alive(*pid).await, "nothing ends outside the window");
    }
    let (_, policies) = server.operator_get("/v1/policies").await;
    assert_eq!(
        listed(&policies, "nightly")["in_window"],
        false,
        "{policies}"
    );
    assert_eq!(listed(&policies, "any")["in_window"], true, "{policies}");
    // Observing is not bound by windows: it ends nothing anyway.
    let observed = run(&server, "observer", true).await;
    assert_eq!(observed["outcome"], "observed", "{observed}");

    let inside = run(&server, "any", true).await;
    assert_eq!(inside["outcome"], "fired", "{inside}");
    assert_eq!(
        pids(&inside["action"], "main", "terminated"),
        sorted(&sessions[..1]),
        "{inside}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_login_sessions_threshold_counts_the_logins_sessions_in_any_state() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = with_policy(
        &pg,
        &ws,
        r#"name = "busy-login"
        targets = ["main"]
        selector = { logins = ["app"], application_names = ["batch"] }
        when = { login_sessions_above = 5 }
        interval = "1h""#,
    )
    .await
    .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(pg.session("app", "pw", "postgres", "batch").await);
    }
    let _others = pg.open_sessions("app", "pw", 3).await;
    // Five sessions of app, two of them selected: not above five.
    let below = run(&server, "busy-login", true).await;
    assert_eq!(below["outcome"], "below_threshold", "{below}");
    assert_eq!(threshold(&below)["login_sessions"], 5, "{below}");
    assert_eq!(threshold(&below)["selected"], 2, "{below}");
    held.push(pg.session("app", "pw", "postgres", "web").await);
    let above = run(&server, "busy-login", true).await;
    assert_eq!(above["outcome"], "observed", "{above}");
    assert_eq!(threshold(&above)["login_sessions"], 6, "{above}");
    server.stop().await;
}

#[tokio::test]
async fn a_target_that_cannot_be_read_reports_its_error_and_the_next_still_runs() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let down = ws.secret_path("down.url", "postgres://sever_admin:pw@127.0.0.1:1/postgres");
    let config = with_policy(
        &pg,
        &ws,
        // "down" sorts first, so it is evaluated (and would take max_per_run) first.
        r#"name = "idle-app"
        targets = ["down", "main"]
        selector = { logins = ["app"], states = ["idle"] }
        max_per_run = 1
        enforcement = "enforce"
        interval = "1h""#,
    )
    .await
    .target_postgres("down", &down)
    .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let sessions = pg.open_sessions("app", "pw", 8).await;

    let evaluation = run(&server, "idle-app", true).await;
    assert_eq!(evaluation["outcome"], "fired", "{evaluation}");
    let targets = evaluation["targets"].as_array().unwrap();
    assert_eq!(targets[0]["target"], "down");
    assert!(targets[0]["error"].is_string(), "{evaluation}");
    assert_eq!(targets[1]["allotted"], 1, "{evaluation}");
    assert_eq!(
        pids(&evaluation["action"], "main", "terminated"),
        sorted(&sessions[..1]),
        "{evaluation}"
    );
    let (_, policies) = server.operator_get("/v1/policies").await;
    let last = &listed(&policies, "idle-app")["last_evaluation"];
    assert!(
        last["error"].is_string(),
        "the failing target is on record: {last}"
    );
    server.stop().await;
}
