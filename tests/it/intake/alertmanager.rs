//! Alertmanager's webhook through the real server. A real Alertmanager (Debian's
//! `prometheus-alertmanager`, `group_wait: 0s`) posts a firing alert to sever with a bearer
//! token of its own, and re-sends it every second: the policy its route names runs once, on
//! the target its label names, however often it is delivered. Direct posts check the rest:
//! resolved alerts are recorded and run nothing, unknown ones are acknowledged and recorded
//! as ignored, a label naming a target the policy does not cover is ignored, bad tokens
//! (an operator's included) get 401 and malformed bodies 400 or 422, with nothing run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sever::operator::token_hash;
use sever_testkit::pg::TestPostgres;
use sever_testkit::util::free_port;

use crate::support::config::ConfigBuilder;
use crate::support::sever::{TOKEN, TestServer, Workspace, create_admin, pids, sorted};

const AM_TOKEN: &str = "am-token-0123456789abcdef";

/// A real Alertmanager, stopped when dropped.
struct TestAlertmanager {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TestAlertmanager {
    /// Starts Debian's Alertmanager with `config` (YAML) on a free port, clustering off.
    async fn start(config: &str) -> Self {
        let binary = ["prometheus-alertmanager", "alertmanager"]
            .into_iter()
            .find(|b| which(b))
            .expect("Alertmanager is installed (scripts/ensure-prometheus.sh)");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alertmanager.yml");
        std::fs::write(&file, config).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let am = Self {
            child,
            port,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(r) = client.get(am.url("/-/ready")).send().await
                && r.status().is_success()
            {
                return am;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("Alertmanager did not become ready");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for TestAlertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(binary: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(binary).is_file())
    })
}

/// A target `main` with login `app`, a policy `crowded` ending one idle `app` session per
/// run, and a route from alert `PgCrowded` to it on the target its `target` label names.
async fn routed(pg: &TestPostgres, ws: &Workspace) -> ConfigBuilder {
    create_admin(pg).await;
    pg.create_login("app", "pw").await;
    ws.target_config(ws.config(), "main", pg)
        .set("queue.poll_interval", "100ms")
        .merge_toml(&format!(
            r#"
            [[policies]]
            name = "crowded"
            targets = ["main"]
            selector = {{ logins = ["app"], states = ["idle"] }}
            max_per_run = 1
            enforcement = "enforce"
            interval = "1h"
            [alertmanager]
            tokens_sha256 = ["{}"]
            [[alertmanager.routes]]
            matchers = {{ alertname = "PgCrowded" }}
            policy = "crowded"
            target_label = "target"
            "#,
            token_hash(AM_TOKEN)
        ))
}

async fn records(ws: &Workspace, kind: &str) -> Vec<Value> {
    ws.records(kind)
        .await
        .into_iter()
        .filter(|r| r["source"] == "alertmanager")
        .collect()
}

async fn policy_actions(server: &TestServer) -> Vec<Value> {
    let (status, page) = server.operator_get("/v1/actions?origin=policy").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["actions"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_real_alertmanager_runs_the_policy_once_however_often_it_delivers() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = routed(&pg, &ws).await.toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let sessions = pg.open_sessions("app", "pw", 8).await;
    let am = TestAlertmanager::start(&format!(
        r#"
route:
  receiver: sever
  group_by: ['alertname']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1s
receivers:
  - name: sever
    webhook_configs:
      - url: "{}"
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials: "{AM_TOKEN}"
"#,
        server.url("/v1/alerts/alertmanager")
    ))
    .await;
    let r = reqwest::Client::new()
        .post(am.url("/api/v2/alerts"))
        .json(
            &json!([{"labels": {"alertname": "PgCrowded", "target": "main",
                                   "severity": "page"},
                       "annotations": {"summary": "too many connections"}}]),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);

    // Delivered once, then re-sent every second: wait for three deliveries.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let accepted = records(&ws, "event.accepted").await.len();
        let duplicates = records(&ws, "event.duplicate").await.len();
        if accepted + duplicates >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager delivered {accepted} + {duplicates} times"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(am);
    let accepted = records(&ws, "event.accepted").await;
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0]["policy"], "crowded");
    assert_eq!(accepted[0]["outcome"], "fired", "{accepted:?}");
    assert_eq!(accepted[0]["target"], "main");
    assert!(records(&ws, "event.duplicate").await.len() >= 2);
    let actions = policy_actions(&server).await;
    assert_eq!(actions.len(), 1, "one run: {actions:?}");
    let (_, action) = server
        .operator_get(&format!(
            "/v1/actions/{}",
            actions[0]["action_id"].as_str().unwrap()
        ))
        .await;
    let report = &action["report"];
    assert_eq!(report["trigger"], "alert", "{action}");
    assert_eq!(
        pids(report, "main", "terminated"),
        sorted(&sessions[..1]),
        "{action}"
    );
    for pid in &sessions[1..] {
        assert!(pg.is_alive(*pid).await);
    }
    server.stop().await;
}

#[tokio::test]
async fn resolved_unknown_and_misrouted_alerts_run_nothing_and_bad_requests_are_refused() {
    let pg = TestPostgres::start();
    let ws = Workspace::new();
    let config = routed(&pg, &ws).await.toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let sessions = pg.open_sessions("app", "pw", 4).await;
    let post = |token: &str, body: String| {
        server
            .client
            .post(server.url("/v1/alerts/alertmanager"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let notification = |status: &str, labels: Value| {
        json!({"version": "4", "groupKey": "{}:{alertname=\"x\"}", "status": status,
               "receiver": "sever", "groupLabels": {}, "commonLabels": {},
               "alerts": [{"status": status, "labels": labels, "annotations": {},
                           "startsAt": "2026-12-06T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                           "fingerprint": "f00d"}]})
        .to_string()
    };
    let crowded = json!({"alertname": "PgCrowded", "target": "main"});

    for (token, body) in [
        ("wrong", notification("firing", crowded.clone())),
        (TOKEN, notification("firing", crowded.clone())),
    ] {
        let r = post(token, body).await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "an operator token is not Alertmanager's"
        );
    }
    let r = post(AM_TOKEN, "{\"version\":".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let mut v3: Value = serde_json::from_str(&notification("firing", crowded.clone())).unwrap();
    v3["version"] = json!("3");
    let r = post(AM_TOKEN, v3.to_string()).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = post(AM_TOKEN, json!({"version": "4"}).to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let answer = |r: reqwest::Response| async move {
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()
    };
    let a = answer(
        post(AM_TOKEN, notification("resolved", crowded.clone()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a["alerts"][0]["status"], "resolved", "{a}");
    let a = answer(
        post(
            AM_TOKEN,
            notification("firing", json!({"alertname": "DiskFull"})),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(a["alerts"][0]["status"], "ignored", "{a}");
    let a = answer(
        post(
            AM_TOKEN,
            notification(
                "firing",
                json!({"alertname": "PgCrowded", "target": "other"}),
            ),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(a["alerts"][0]["status"], "ignored", "{a}");
    assert!(
        a["alerts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not one of"),
        "{a}"
    );

    assert!(policy_actions(&server).await.is_empty(), "nothing ran");
    for pid in &sessions {
        assert!(pg.is_alive(*pid).await);
    }
    assert_eq!(records(&ws, "event.acknowledged").await.len(), 1);
    assert_eq!(records(&ws, "event.ignored").await.len(), 2);
    server.stop().await;
}
