//! `GET /metrics` for real: the server against a real PostgreSQL, real terminations through a
//! signed rotation event and an operator revocation, then the scrape read by Prometheus's own
//! tools: `promtool check metrics` lints it, and the Python `prometheus_client` parser reads
//! the values asserted here. Also where `/metrics` is served and who may read it, and the
//! Vault token's TTL against the Vault stand-in.
//!
//! A test binary of its own: the metrics recorder is global to a process, so the values here
//! are this binary's alone (tests/it runs many servers in one process). Its one test runs the
//! steps in order for the same reason. Needs `promtool` and `prometheus_client`
//! (`scripts/ensure-prometheus.sh` installs both).

/// The parts of `tests/it/support` this binary uses; it uses only some of their helpers.
#[path = "it/support"]
#[allow(dead_code)]
mod support {
    pub mod config;
    pub mod sever;
}

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sever::operator::token_hash;
use sever_testkit::pg::TestPostgres;

use crate::support::config::file;
use crate::support::sever::{TOKEN, TestServer, WRONG_SECRET, Workspace, create_admin, now};
use sever_testkit::vault::VaultStandIn;

/// Upper bound for what should take a second or two (a collector tick is 200 ms here).
const PATIENCE: Duration = Duration::from_secs(10);
/// The scraper's token (`metrics.tokens_sha256`).
const METRICS_TOKEN: &str = "sev_test_metrics_scraper_token_0123456789";

/// One sample as `prometheus_client` parsed it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses an exposition with the Python `prometheus_client` parser (a real Prometheus
/// parser, not ours); panics with its error if it does not parse.
fn parse(body: &str) -> Vec<Sample> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": s.labels, "value": repr(float(s.value))})
print(json.dumps(out))
"#;
    let out = run_with_stdin("python3", &["-c", SCRIPT], body);
    assert!(
        out.status.success(),
        "prometheus_client cannot parse /metrics (scripts/ensure-prometheus.sh installs it): \
         {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap().to_owned(),
            labels: serde_json::from_value(s["labels"].clone()).unwrap(),
            value: s["value"].as_str().unwrap().parse().unwrap(),
        })
        .collect()
}

/// Runs `program` with `input` on its standard input.
fn run_with_stdin(program: &str, args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (scripts/ensure-prometheus.sh installs it): {e}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `promtool check metrics` on `body`: Prometheus's own lint of names, types and help.
fn promtool_check(body: &str) {
    let out = run_with_stdin("promtool", &["check", "metrics"], body);
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- body ---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the one sample `name` with (at least) `labels`; `None` if there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().map(|s| s.value)
}

/// GETs `url` (with `token` as a bearer token, if any): status and body.
async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    let status = r.status();
    (status, r.text().await.unwrap())
}

/// Scrapes `url` until `ready` holds for its samples (the collector works on a tick), and
/// returns the last body with its samples.
async fn scrape_until(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    what: &str,
    ready: impl Fn(&[Sample]) -> bool,
) -> (String, Vec<Sample>) {
    let started = Instant::now();
    loop {
        let (status, body) = get(client, url, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let samples = parse(&body);
        if ready(&samples) {
            return (body, samples);
        }
        assert!(started.elapsed() < PATIENCE, "never saw {what}:\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn metrics_follow_real_terminations_and_only_scrapers_may_read_them() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    pg.create_login("stranger", "pw").await;
    let ws = Workspace::new();
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .credential("orders", &[("main", "app")])
        .set("metrics.tokens_sha256", vec![token_hash(METRICS_TOKEN)])
        .set("metrics.sessions_interval", "200ms")
        // No claims but the worker's first and those the test's actions ask for.
        .set("queue.poll_interval", "1h")
        .merge_toml(
            r#"[[policies]]
            name = "watch"
            targets = ["main"]
            selector = { logins = ["app"] }
            interval = "1h""#,
        )
        .toml();
    let path = ws.write_config(&config);
    let app = pg.open_sessions("app", "pw", 2).await;
    let stranger = pg.open_sessions("stranger", "pw", 1).await;

    // --- A server with a metrics listener of its own: no token asked there. ---------------
    let scrape = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scrape_url = format!("http://{}/metrics", scrape.local_addr().unwrap());
    let operator = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = sever::RunOptions {
        operator_listener: Some(operator),
        metrics_listener: Some(scrape),
        ..Default::default()
    };
    let server = TestServer::start_with(&path, options).await;
    let client = server.client.clone();

    // The collector's first ticks: the configured login by name, every other login as other.
    let (_, before) = scrape_until(&client, &scrape_url, None, "app's 2 sessions", |s| {
        value(s, "sever_sessions", &[("target", "main"), ("login", "app")]) == Some(2.0)
    })
    .await;
    assert_eq!(
        value(
            &before,
            "sever_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&before, "sever_target_up", &[("target", "main")]),
        Some(1.0)
    );
    assert!(
        value(
            &before,
            "sever_target_list_duration_seconds",
            &[("target", "main")]
        )
        .is_some()
    );
    // A configured (protected) login with no session reads 0; stranger and sever's own
    // connections are other.
    assert_eq!(
        value(
            &before,
            "sever_sessions",
            &[("target", "main"), ("login", "postgres")]
        ),
        Some(0.0)
    );
    let other = value(
        &before,
        "sever_sessions",
        &[("target", "main"), ("login", "other")],
    );
    assert!(other.is_some_and(|n| n >= 1.0), "{other:?}");
    assert!(
        !before
            .iter()
            .any(|s| s.labels.get("login").map(String::as_str) == Some("stranger")),
        "a login the config does not name is never a label"
    );
    // The checkpoint writer wrote its first checkpoint at start, and checked the chain.
    assert_eq!(value(&before, "sever_audit_chain_ok", &[]), Some(1.0));
    let checkpoint = value(&before, "sever_audit_checkpoint_timestamp_seconds", &[]).unwrap();
    assert!((checkpoint - now() as f64).abs() < 60.0, "{checkpoint}");
    assert!(value(&before, "sever_audit_checkpoint_age_seconds", &[]).is_some());

    // An observing policy's evaluation is counted by policy and outcome, with what it
    // picked (a quarter of the target's clients at most: one here).
    let (status, evaluation) = server
        .operator_post("/v1/policies/watch/run", &json!({"execute": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{evaluation}");
    assert_eq!(evaluation["outcome"], "observed", "{evaluation}");
    let picked = evaluation["targets"][0]["allotted"].as_f64().unwrap();
    let (_, counted) = scrape_until(&client, &scrape_url, None, "the policy's evaluation", |s| {
        value(
            s,
            "sever_policy_evaluations_total",
            &[("policy", "watch"), ("outcome", "observed")],
        ) == Some(1.0)
    })
    .await;
    assert_eq!(
        value(
            &counted,
            "sever_policy_matched_sessions_total",
            &[("policy", "watch")]
        ),
        Some(picked)
    );
    assert!(picked >= 1.0, "{evaluation}");

    let claims = |s: &[Sample]| {
        ["found", "empty"]
            .map(|outcome| value(s, "sever_queue_claims_total", &[("outcome", outcome)]))
    };
    let claimed_before = claims(&counted);
    assert!(
        claimed_before.iter().flatten().sum::<f64>() >= 1.0,
        "the worker's first claim: {claimed_before:?}"
    );

    // A real rotation: the app's two sessions predate it and are terminated.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, report) = server
        .event(&json!({"credential": "orders", "kind": "rotated"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    for pid in &app {
        assert!(pg.wait_gone(*pid, PATIENCE).await, "session {pid} survived");
    }
    // A forged one is refused.
    let body = serde_json::to_vec(&json!({"credential": "orders", "kind": "rotated"})).unwrap();
    let forged = server
        .post_signed("/v1/events", &body, "msg_forged", now(), WRONG_SECRET)
        .await;
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    // An operator's revocation of the stranger.
    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "stranger", "targets": ["main"], "reason": "INC-9"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(pg.wait_gone(stranger[0], PATIENCE).await);

    let (body, after) = scrape_until(&client, &scrape_url, None, "app's sessions gone", |s| {
        value(s, "sever_sessions", &[("target", "main"), ("login", "app")]) == Some(0.0)
            && value(s, "sever_queue_pending_steps", &[]) == Some(0.0)
    })
    .await;
    promtool_check(&body);
    // The rotation and the revocation were accepted here, so their steps started without a
    // claim of the store, and ending them asked for none.
    assert_eq!(claims(&after), claimed_before);
    let webhook = |outcome| {
        value(
            &after,
            "sever_events_received_total",
            &[("source", "webhook"), ("outcome", outcome)],
        )
    };
    assert_eq!(webhook("accepted"), Some(1.0));
    assert_eq!(webhook("refused"), Some(1.0));
    assert_eq!(
        value(
            &after,
            "sever_refusals_total",
            &[("code", "invalid_signature")]
        ),
        Some(1.0)
    );
    let terminated = |origin| {
        value(
            &after,
            "sever_sessions_terminated_total",
            &[("target", "main"), ("origin", origin)],
        )
    };
    assert_eq!(terminated("event"), Some(2.0));
    assert_eq!(terminated("revocation"), Some(1.0));
    // Started at 0 for the alerts' `increase()`, and still 0: every session went.
    let remaining: Vec<&Sample> = after
        .iter()
        .filter(|s| s.name == "sever_sessions_remaining_total")
        .collect();
    assert!(
        remaining
            .iter()
            .any(|s| s.labels["target"] == "main" && s.labels["origin"] == "event"),
        "{body}"
    );
    assert!(remaining.iter().all(|s| s.value == 0.0), "{remaining:?}");
    assert_eq!(
        value(
            &after,
            "sever_actions_total",
            &[("origin", "event"), ("status", "incomplete")]
        ),
        Some(0.0)
    );
    let actions = |origin| {
        value(
            &after,
            "sever_actions_total",
            &[("origin", origin), ("status", "completed")],
        )
    };
    assert_eq!(actions("event"), Some(1.0));
    assert_eq!(actions("revocation"), Some(1.0));
    // The event-to-clean time is a histogram with buckets, not a summary.
    let clean = |name, extra: &[(&str, &str)]| {
        let mut labels = vec![("origin", "event")];
        labels.extend_from_slice(extra);
        value(&after, name, &labels)
    };
    assert_eq!(
        clean("sever_event_to_clean_seconds_bucket", &[("le", "+Inf")]),
        Some(1.0)
    );
    assert_eq!(clean("sever_event_to_clean_seconds_count", &[]), Some(1.0));
    let within_a_minute = clean("sever_event_to_clean_seconds_bucket", &[("le", "60")]);
    assert_eq!(within_a_minute, Some(1.0), "{body}");
    assert!(
        !after.iter().any(|s| s.labels.contains_key("quantile")),
        "no summaries: {body}"
    );
    // Every write went through the store's commit, timed.
    let writes = value(
        &after,
        "sever_store_write_duration_seconds_count",
        &[("outcome", "ok")],
    );
    assert!(writes.is_some_and(|n| n >= 3.0), "{writes:?}");
    assert_eq!(
        value(
            &after,
            "sever_store_write_duration_seconds_bucket",
            &[("outcome", "ok"), ("le", "+Inf")]
        ),
        writes
    );
    assert_eq!(
        value(&after, "sever_queue_oldest_pending_step_age_seconds", &[]),
        Some(0.0)
    );
    assert!(
        !after
            .iter()
            .any(|s| s.labels.contains_key("pid") || s.labels.values().any(|v| v == "stranger")),
        "no pid or unconfigured login in any label"
    );

    // With a listener of its own, /metrics is not on the operator or intake listener.
    let (status, _) = get(
        &client,
        &server.operator_url("/metrics"),
        Some(METRICS_TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;

    // --- Without one: on the operator listener, for the metrics token only. ---------------
    let server = TestServer::start_split(&path).await;
    let url = server.operator_url("/metrics");
    let (status, body) = get(&client, &url, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = get(&client, &url, Some(TOKEN)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an operator token: {body}"
    );
    let (status, body) = get(&client, &url, Some("sev_wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = get(&client, &server.url("/metrics"), Some(METRICS_TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not on the intake listener");
    let (body, samples) = scrape_until(&client, &url, Some(METRICS_TOKEN), "the refusals", |s| {
        value(s, "sever_refusals_total", &[("code", "invalid_token")]) == Some(2.0)
    })
    .await;
    promtool_check(&body);
    assert_eq!(
        value(
            &samples,
            "sever_refusals_total",
            &[("code", "missing_token")]
        ),
        Some(1.0)
    );
    // Counters are the process's: what the first server counted is still there.
    assert_eq!(
        value(
            &samples,
            "sever_sessions_terminated_total",
            &[("target", "main"), ("origin", "event")]
        ),
        Some(2.0)
    );
    assert_eq!(value(&samples, "sever_vault_token_ttl_seconds", &[]), None);
    server.stop().await;

    // --- With Vault: the TTL left of sever's token (the stand-in issues an hour). ---------
    let vault = VaultStandIn::start().await;
    vault.allow_approle("approle", "sever-role-id", "sever-secret-id");
    let secret_id = ws.secret_path("vault.secret-id", "sever-secret-id");
    let with_vault = ws
        .target_config(ws.config(), "main", &pg)
        .set("metrics.tokens_sha256", vec![token_hash(METRICS_TOKEN)])
        .set("vault.address", vault.address())
        .set("vault.auth.method", "approle")
        .set("vault.auth.role_id", "sever-role-id")
        .set("vault.auth.secret_id", file(&secret_id))
        .toml();
    let server = TestServer::start(&ws.write_config(&with_vault)).await;
    let url = server.url("/metrics");
    let (body, samples) = scrape_until(&client, &url, Some(METRICS_TOKEN), "a Vault TTL", |s| {
        value(s, "sever_vault_token_ttl_seconds", &[]).is_some()
    })
    .await;
    promtool_check(&body);
    let ttl = value(&samples, "sever_vault_token_ttl_seconds", &[]).unwrap();
    assert!((3000.0..=3600.0).contains(&ttl), "{ttl}");
    server.stop().await;
}
