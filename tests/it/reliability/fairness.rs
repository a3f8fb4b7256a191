//! No target takes the workers: a target behind a real TCP proxy that accepts and then stops
//! forwarding (a partition, a hung proxy), with hundreds of steps queued for it, does not
//! delay a rotation on a healthy target, also when most targets are stalled and there are
//! only two worker slots. The order of events is asserted, not how long anything took.

use std::time::{Duration, Instant};

use crate::support::config::ConfigBuilder;
use crate::support::sever::{
    ADMIN_PASSWORD, SECRET, TestServer, Workspace, create_admin, now, pids, sorted,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;
use sever_testkit::proxy::StallingProxy;

/// Generous upper bound for waits on things that should take a few seconds.
const PATIENCE: Duration = Duration::from_secs(30);

/// The head of a config with short timeouts, so a stalled attempt ends within seconds, and
/// `concurrency` worker slots. The request limit bounds `?wait=true`.
fn head(ws: &Workspace, concurrency: usize) -> String {
    head_with_timeout(ws, concurrency, "2s")
}

/// [`head`] with its own `termination.timeout`.
fn head_with_timeout(ws: &Workspace, concurrency: usize, timeout: &str) -> String {
    ws.config()
        .set("server.request_timeout", "15s")
        .set("termination.timeout", timeout)
        .set("termination.verify_timeout", "1s")
        .set("queue.concurrency", concurrency as i64)
        .set("queue.max_backoff", "2s")
        .toml()
}

/// A target on `pg` reached through `port` (its own, or a proxy's), and a credential
/// `id` for `login` on it.
fn target_and_credential(ws: &Workspace, id: &str, port: u16, login: &str) -> String {
    target_and_credential_with(ws, id, port, login, "1s")
}

/// [`target_and_credential`] with its own `connect_timeout`.
fn target_and_credential_with(
    ws: &Workspace,
    id: &str,
    port: u16,
    login: &str,
    connect_timeout: &str,
) -> String {
    let url = format!("postgres://sever_admin:{ADMIN_PASSWORD}@127.0.0.1:{port}/postgres");
    ConfigBuilder::new()
        .target_postgres(id, &ws.secret_path(&format!("{id}.url"), &url))
        .set(&format!("targets.{id}.connect_timeout"), connect_timeout)
        .credential(id, &[(id, login)])
        .toml()
}

/// A PostgreSQL with sever's admin and the logins `app` (on the targets that will stall) and
/// `web` (on the healthy one), and `n` proxies in front of it, still forwarding.
async fn cluster_with_proxies(n: usize) -> (TestPostgres, Vec<StallingProxy>) {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    pg.create_login("web", "pw").await;
    let mut proxies = Vec::new();
    for _ in 0..n {
        proxies.push(StallingProxy::start(pg.port()).await);
    }
    (pg, proxies)
}

/// Targets `s0`, `s1`, … behind `proxies` (for login `app`) and the healthy target `h` on
/// `pg` directly (for `web`), each with a credential of its own name.
fn targets(
    ws: &Workspace,
    pg: &TestPostgres,
    proxies: &[StallingProxy],
    connect_timeout: &str,
) -> String {
    let mut config = String::new();
    for (i, proxy) in proxies.iter().enumerate() {
        let id = format!("s{i}");
        config.push_str(&target_and_credential_with(
            ws,
            &id,
            proxy.port,
            "app",
            connect_timeout,
        ));
    }
    config + &target_and_credential(ws, "h", pg.port(), "web")
}

/// Queues an event for `credential` without waiting; its action id.
async fn queue_event(server: &TestServer, credential: &str) -> String {
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let body = serde_json::to_vec(&json!({"credential": credential, "kind": "revoked"})).unwrap();
    let r = server
        .post_signed("/v1/events", &body, &id, now(), SECRET)
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: Value = r.json().await.unwrap();
    body["action_id"].as_str().unwrap().to_owned()
}

/// The one step of action `id`.
async fn step(server: &TestServer, id: &str) -> Value {
    let (status, body) = server.operator_get(&format!("/v1/actions/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["steps"].as_array().unwrap().len(), 1, "{body}");
    body["steps"][0].clone()
}

/// Waits until the one step of action `id` is as `wanted` says (`what` names it for the
/// failure message).
async fn wait_for_step(server: &TestServer, id: &str, what: &str, wanted: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let step = step(server, id).await;
        if wanted(&step) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {step}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every step of `ids` is still pending; returns how many of them were attempted.
async fn pending_and_attempted(server: &TestServer, ids: &[String]) -> usize {
    let mut attempted = 0;
    for id in ids {
        let step = step(server, id).await;
        assert_eq!(step["state"], "pending", "{step}");
        if step["attempts"].as_i64().unwrap() > 0 {
            attempted += 1;
        }
    }
    attempted
}

/// A rotation on the healthy target `h`: its report, and it terminated every one of `victims`.
async fn rotation_on_healthy(server: &TestServer, pg: &TestPostgres, victims: &[i32]) -> Value {
    let (status, report) = server
        .event(&json!({"credential": "h", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "still running: {report}");
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(pids(&report, "h", "terminated"), sorted(victims));
    for pid in victims {
        assert!(pg.wait_gone(*pid, PATIENCE).await, "session {pid} survived");
    }
    report
}

#[tokio::test]
async fn a_stalled_target_with_300_steps_queued_does_not_delay_a_rotation_elsewhere() {
    let (pg, proxies) = cluster_with_proxies(1).await;
    let ws = Workspace::new();
    // Four slots: before this change, the stalled target's steps took all four, one
    // termination timeout after another, and the healthy step waited behind them.
    let config = head(&ws, 4) + &targets(&ws, &pg, &proxies, "1s");
    let server = TestServer::start(&ws.write_config(&config)).await;
    // The target stops answering, its connections staying open.
    proxies[0].stall();
    let mut stalled = Vec::new();
    for _ in 0..300 {
        stalled.push(queue_event(&server, "s0").await);
    }
    let victims = pg.open_sessions("web", "pw", 3).await;

    rotation_on_healthy(&server, &pg, &victims).await;

    // The healthy rotation finished while every stalled step is still pending, and at most
    // the stalled target's share of the slots (one of four) was ever given to it.
    let attempted = pending_and_attempted(&server, &stalled).await;
    assert!(attempted <= 1, "{attempted} stalled steps were attempted");
    let last = step(&server, &stalled[299]).await;
    assert_eq!(last["state"], "pending", "{last}");
    drop(server);
}

#[tokio::test]
async fn three_stalled_targets_with_100_steps_each_leave_two_workers_free_for_a_healthy_one() {
    let (pg, proxies) = cluster_with_proxies(3).await;
    let ws = Workspace::new();
    let config = head(&ws, 2) + &targets(&ws, &pg, &proxies, "1s");
    let server = TestServer::start(&ws.write_config(&config)).await;
    for proxy in &proxies {
        proxy.stall();
    }
    let mut stalled = Vec::new();
    for i in 0..3 {
        let mut ids = Vec::new();
        for _ in 0..100 {
            ids.push(queue_event(&server, &format!("s{i}")).await);
        }
        stalled.push(ids);
    }
    // Each stalled target is found out: by a first attempt that timed out, or by a probe.
    for ids in &stalled {
        wait_for_step(&server, &ids[0], "found out", |s| {
            s["last_error"].is_string()
        })
        .await;
    }
    let victims = pg.open_sessions("web", "pw", 3).await;

    rotation_on_healthy(&server, &pg, &victims).await;

    // The healthy step ran at once: none of the 300 stalled steps took a slot since their
    // targets were found out, beyond the first attempt each may have made.
    for ids in &stalled {
        let attempted = pending_and_attempted(&server, ids).await;
        assert!(
            attempted <= 1,
            "{attempted} steps of one stalled target attempted"
        );
    }
    drop(server);
}

#[tokio::test]
async fn targets_that_stall_as_their_steps_start_hold_every_shared_slot_and_a_healthy_target_still_runs()
 {
    let (pg, proxies) = cluster_with_proxies(2).await;
    let ws = Workspace::new();
    // Two shared slots, one per target; the timeouts are far longer than the test, so the
    // stalled steps hold their slots throughout.
    let config = head_with_timeout(&ws, 2, "60s") + &targets(&ws, &pg, &proxies, "60s");
    let server = TestServer::start(&ws.write_config(&config)).await;
    // A step on each target that will stall ends well first: the worker has seen both answer,
    // so it has no reason to hold their next steps back.
    for credential in ["s0", "s1"] {
        let (status, report) = server
            .event(&json!({"credential": credential, "kind": "revoked"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["status"], "completed", "{report}");
    }
    for proxy in &proxies {
        proxy.stall();
    }
    let stalled = [
        queue_event(&server, "s0").await,
        queue_event(&server, "s1").await,
    ];
    // Both stalled steps have started and hang: every shared slot is taken.
    for id in &stalled {
        wait_for_step(&server, id, "started", |s| s["attempts"] == 1).await;
    }
    let victims = pg.open_sessions("web", "pw", 2).await;

    rotation_on_healthy(&server, &pg, &victims).await;

    // The stalled steps are still in their first attempt: the healthy target did not wait
    // for either of them to time out.
    for id in &stalled {
        let step = step(&server, id).await;
        assert_eq!(step["state"], "pending", "{step}");
        assert_eq!(step["attempts"], 1, "{step}");
        assert!(step["last_error"].is_null(), "{step}");
    }
    drop(server);
}
