//! End-to-end through the HTTP API against real PostgreSQL servers: revocation, session
//! listing, dropped roles, a target that is down (the cutoff itself: `terminate::cutoff`).

use std::time::Duration;

use crate::support::config::file;
use crate::support::sever::{TestServer, Workspace, create_admin, db_now, pids};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;
use sever_testkit::util::encode;

const GONE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn operator_revocation_dry_run_before_and_all() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("leaked", "pw").await;
    pg.create_login("bystander", "pw").await;
    let ws = Workspace::new();
    let config = ws.target_config(ws.config(), "main", &pg).toml();
    let server = TestServer::start(&ws.write_config(&config)).await;

    let early = pg.open_sessions("leaked", "pw", 2).await;
    let (mut admin, _) = pg.session("postgres", "", "postgres", "").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = db_now(&mut admin).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = pg.open_sessions("leaked", "pw", 1).await;
    let bystander = pg.open_sessions("bystander", "pw", 1).await;

    // Dry run: reports exactly what would go, changes nothing.
    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "leaked", "targets": ["main"], "reason": "INC-7", "dry_run": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["dry_run"], true);
    let mut all: Vec<i64> = early.iter().chain(&late).map(|p| i64::from(*p)).collect();
    all.sort();
    assert_eq!(pids(&report, "main", "matched"), all);
    assert_eq!(pids(&report, "main", "terminated"), Vec::<i64>::new());
    for pid in early.iter().chain(&late) {
        assert!(pg.is_alive(*pid).await, "dry run must not terminate {pid}");
    }

    // Only sessions before the given time.
    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "leaked", "targets": "all", "before": cut, "reason": "INC-7 part 1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let mut expected: Vec<i64> = early.iter().map(|p| i64::from(*p)).collect();
    expected.sort();
    assert_eq!(pids(&report, "main", "terminated"), expected);
    for pid in &early {
        assert!(pg.wait_gone(*pid, GONE).await);
    }
    assert!(pg.is_alive(late[0]).await);

    // Then everything of that login; the bystander stays.
    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "leaked", "targets": ["main"], "reason": "INC-7 part 2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        pids(&report, "main", "terminated"),
        vec![i64::from(late[0])]
    );
    assert!(pg.wait_gone(late[0], GONE).await);
    assert!(pg.is_alive(bystander[0]).await);

    // The operator's name is the actor of the records.
    server.stop().await;
    let audit = ws.audit().await;
    let records = audit.list(&Default::default()).await.unwrap();
    let would: Vec<_> = records
        .iter()
        .filter(|r| r.kind == "session.would_terminate")
        .collect();
    assert_eq!(would.len(), 3);
    let terminated: Vec<_> = records
        .iter()
        .filter(|r| r.kind == "session.terminated")
        .collect();
    assert_eq!(terminated.len(), 3);
    assert!(terminated.iter().all(|r| r.actor == "operator:alice"));
    let planned: Value = serde_json::from_str(
        &records
            .iter()
            .find(|r| r.kind == "action.planned")
            .unwrap()
            .detail,
    )
    .unwrap();
    assert_eq!(planned["reason"], "INC-7");
    assert!(audit.verify().await.unwrap().ok);
}

#[tokio::test]
async fn sessions_listing_filters() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    pg.create_login("batch", "pw").await;
    pg.exec("CREATE DATABASE reports").await;
    let ws = Workspace::new();
    let config = ws.target_config(ws.config(), "main", &pg).toml();
    let server = TestServer::start(&ws.write_config(&config)).await;

    let (c1, web) = pg.session("app", "pw", "postgres", "web").await;
    let (c2, worker) = pg.session("app", "pw", "reports", "worker").await;
    let (mut admin, _) = pg.session("postgres", "", "postgres", "").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid = db_now(&mut admin).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (c3, nightly) = pg.session("batch", "pw", "reports", "nightly").await;
    let _keep = (c1, c2, c3);

    let list = |query: &'static str| {
        let server = &server;
        async move {
            let (status, body) = server.operator_get(&format!("/v1/sessions{query}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["errors"], json!([]), "{body}");
            let mut pids: Vec<i32> = body["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["application_name"] != "sever" && s["login"] != "postgres")
                .map(|s| s["pid"].as_i64().unwrap() as i32)
                .collect();
            pids.sort();
            pids
        }
    };
    let sorted = |mut v: Vec<i32>| {
        v.sort();
        v
    };
    assert_eq!(list("?login=app").await, sorted(vec![web, worker]));
    assert_eq!(
        list("?database=reports").await,
        sorted(vec![worker, nightly])
    );
    assert_eq!(list("?application_name=nightly").await, vec![nightly]);
    assert_eq!(
        list("?target=main&login=app&database=postgres").await,
        vec![web]
    );
    assert_eq!(
        list("?client_addr=127.0.0.1&login=batch").await,
        vec![nightly]
    );
    let before = format!("?started_before={}", encode(&mid));
    let after = format!("?started_after={}", encode(&mid));
    let (_, body) = server
        .operator_get(&format!("/v1/sessions{before}&login=app"))
        .await;
    assert_eq!(body["sessions"].as_array().unwrap().len(), 2);
    let (_, body) = server
        .operator_get(&format!("/v1/sessions{after}&database=reports"))
        .await;
    let got: Vec<i64> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![i64::from(nightly)]);

    // Without a token: refused.
    let r = server
        .client
        .get(server.url("/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Unknown target: refused, not silently empty.
    let (status, body) = server.operator_get("/v1/sessions?target=nope").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "unknown_target");
    server.stop().await;
}

#[tokio::test]
async fn a_dropped_roles_sessions_are_still_found_and_terminated() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("v_token_app_x1", "pw").await;
    let ws = Workspace::new();
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .credential("dynamic", &[("main", "v_token_app_x1")])
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let victims = pg.open_sessions("v_token_app_x1", "pw", 2).await;
    wait_until_learned(&ws, "v_token_app_x1").await;

    // What Vault's revocation does: the role is dropped; its sessions keep running.
    pg.exec("DROP ROLE v_token_app_x1").await;
    for pid in &victims {
        assert!(
            pg.is_alive(*pid).await,
            "PostgreSQL keeps a dropped role's sessions"
        );
    }

    let (status, report) = server
        .event(&json!({"credential": "dynamic", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let mut expected: Vec<i64> = victims.iter().map(|p| i64::from(*p)).collect();
    expected.sort();
    assert_eq!(pids(&report, "main", "terminated"), expected, "{report}");
    // The report still names the login, from what sever remembered.
    assert_eq!(
        report["targets"][0]["terminated"][0]["login"],
        "v_token_app_x1"
    );
    for pid in &victims {
        assert!(pg.wait_gone(*pid, GONE).await);
    }
    server.stop().await;
}

/// Waits until sever has learned (at start-up) and stored the role oid of `login`.
async fn wait_until_learned(ws: &Workspace, login: &str) {
    for _ in 0..100 {
        let pool =
            sqlx::SqlitePool::connect(&format!("sqlite://{}", ws.path("sever.db").display()))
                .await
                .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM login_identities WHERE login = $1")
            .bind(login)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        if n > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sever never learned the oid of {login}");
}

#[tokio::test]
async fn a_remembered_oid_that_now_names_another_role_is_left_alone() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app_v1", "pw").await;
    let ws = Workspace::new();
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .credential("app", &[("main", "app_v1")])
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    wait_until_learned(&ws, "app_v1").await;

    // The oid sever remembers for app_v1 passes to another name (as a reused oid would), and
    // a new role takes the name: only the new role's sessions are app_v1's now.
    let others = pg.open_sessions("app_v1", "pw", 2).await;
    pg.exec("ALTER ROLE app_v1 RENAME TO unrelated").await;
    pg.create_login("app_v1", "pw").await;
    let victims = pg.open_sessions("app_v1", "pw", 2).await;

    let (status, report) = server
        .event(&json!({"credential": "app", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let mut expected: Vec<i64> = victims.iter().map(|p| i64::from(*p)).collect();
    expected.sort();
    assert_eq!(pids(&report, "main", "terminated"), expected, "{report}");
    for pid in &victims {
        assert!(pg.wait_gone(*pid, GONE).await);
    }
    for pid in &others {
        assert!(
            pg.is_alive(*pid).await,
            "a session of another role was ended"
        );
    }

    // The new role's oid is remembered too, so its sessions are found once it is dropped.
    let orphans = pg.open_sessions("app_v1", "pw", 1).await;
    pg.exec("DROP ROLE app_v1").await;
    let (status, report) = server
        .event(&json!({"credential": "app", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        pids(&report, "main", "terminated"),
        vec![i64::from(orphans[0])],
        "{report}"
    );
    assert!(pg.is_alive(others[0]).await && pg.is_alive(others[1]).await);
    server.stop().await;
}

#[tokio::test]
async fn one_target_down_does_not_stop_the_other_and_giving_up_is_reported() {
    let up = TestPostgres::start();
    let down = TestPostgres::start();
    for pg in [&up, &down] {
        create_admin(pg).await;
        pg.create_login("app", "pw").await;
    }
    let ws = Workspace::new();
    // A short retry window, so the down target is given up on within the request.
    let config = ws.config().set("queue.retry_for", "5s");
    let config = ws.target_config(config, "a", &up);
    let config = ws
        .target_config(config, "b", &down)
        .credential("orders", &[("a", "app"), ("b", "app")])
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let victims = up.open_sessions("app", "pw", 2).await;
    down.stop();

    let (status, report) = server
        .event(&json!({"credential": "orders", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "incomplete");
    let mut expected: Vec<i64> = victims.iter().map(|p| i64::from(*p)).collect();
    expected.sort();
    assert_eq!(pids(&report, "a", "terminated"), expected);
    let b = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "b")
        .unwrap();
    let error = b["error"].as_str().unwrap();
    assert!(
        error.contains("connect") && error.contains("gave up after"),
        "{b}"
    );
    for pid in &victims {
        assert!(up.wait_gone(*pid, GONE).await);
    }

    // Readiness reports the down target by name without failing the whole service.
    let r = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["targets"]["a"]["ok"], true);
    assert_eq!(ready["targets"]["b"]["ok"], false);

    server.stop().await;
    let audit = ws.audit().await;
    let failed: Vec<Value> = audit
        .list(&sever::audit::ListFilter {
            kind: Some("target.failed".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(&r.detail).unwrap())
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["target"], "b");
    assert!(failed[0]["attempts"].as_i64().unwrap() > 1, "{}", failed[0]);
    // The first failure is recorded once, not every attempt.
    let retrying = ws.records("target.retrying").await;
    assert_eq!(retrying.len(), 1, "{retrying:?}");
    assert_eq!(retrying[0]["target"], "b");
}

#[tokio::test]
async fn a_tls_target_is_reached_with_certificate_verification() {
    // Guards the process-wide rustls crypto provider: without one installed explicitly,
    // the first TLS connection panics once two backends are linked.
    let pg = TestPostgres::start();
    let ca = pg.enable_tls();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(
            "sever_admin",
            crate::support::sever::ADMIN_PASSWORD,
            "postgres"
        ),
        ca.display()
    );
    let config = ws
        .config()
        .set("targets.tls.engine", "postgres")
        .set("targets.tls.url", file(&ws.secret_path("tls.url", &url)))
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let victims = pg.open_sessions("app", "pw", 1).await;
    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["tls"], "reason": "tls test"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        pids(&report, "tls", "terminated"),
        vec![i64::from(victims[0])]
    );
    // sever's own connection really is encrypted.
    let mut admin = pg.session("postgres", "", "postgres", "").await.0;
    let encrypted: bool = sqlx::query_scalar(
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'sever'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(encrypted);
    server.stop().await;
}

#[tokio::test]
async fn missing_signal_privilege_is_reported_per_session_not_hidden() {
    let pg = TestPostgres::start();
    // Can see sessions but not signal them.
    pg.exec("CREATE ROLE sever_admin LOGIN PASSWORD 'pw' IN ROLE pg_read_all_stats")
        .await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let url = ws.secret_path("weak.url", &pg.url("sever_admin", "pw", "postgres"));
    let config = ws
        .config()
        .set("targets.main.engine", "postgres")
        .set("targets.main.url", file(&url))
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let victims = pg.open_sessions("app", "pw", 2).await;

    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "reason": "r"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "incomplete");
    let failed = report["targets"][0]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{report}");
    assert!(
        failed.iter().all(|f| f["error"]
            .as_str()
            .unwrap()
            .contains("grant pg_signal_backend")),
        "{report}"
    );
    for pid in &victims {
        assert!(pg.is_alive(*pid).await);
    }
    server.stop().await;
    let audit = ws.audit().await;
    let failed = audit
        .list(&sever::audit::ListFilter {
            kind: Some("session.failed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 2);
}

/// sever does not ping a pooled connection before a rotation's first statement (a round trip
/// at network distance), so a connection that died while idle must be noticed by that
/// statement and replaced at once: the rotation after a target restart still completes in
/// its first attempt, with no retry recorded.
#[tokio::test]
async fn a_rotation_right_after_the_target_restarted_completes_in_its_first_attempt() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .credential("orders", &[("main", "app")])
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let rotate = async || {
        server
            .event(&json!({"credential": "orders", "kind": "revoked"}))
            .await
    };

    // A first rotation leaves its connection idle in sever's pool.
    let first = pg.open_sessions("app", "pw", 1).await;
    let (status, report) = rotate().await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        pids(&report, "main", "terminated"),
        vec![i64::from(first[0])]
    );

    // The restart ends that connection while it sits idle.
    pg.restart();
    let victims = pg.open_sessions("app", "pw", 2).await;
    let (status, report) = rotate().await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    let mut expected: Vec<i64> = victims.iter().map(|p| i64::from(*p)).collect();
    expected.sort();
    assert_eq!(pids(&report, "main", "terminated"), expected);
    for pid in &victims {
        assert!(pg.wait_gone(*pid, GONE).await, "session {pid} survived");
    }
    let id = report["action_id"].as_str().unwrap().to_owned();
    let (_, action) = server.operator_get(&format!("/v1/actions/{id}")).await;
    assert_eq!(action["steps"][0]["attempts"], 1, "{action}");
    server.stop().await;
    assert!(ws.records("target.retrying").await.is_empty());
}

/// `GET /v1/sessions` with the selector: backups spared by application name, the summary
/// first, query text only on request, and keys it does not know refused.
#[tokio::test]
async fn the_listing_takes_the_selector_and_spares_backups_by_application_name() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let config = ws.target_config(ws.config(), "main", &pg).toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let (_api, api_pid) = pg.session("app", "pw", "postgres", "orders-api").await;
    let (_dump, dump_pid) = pg.session("app", "pw", "postgres", "pg_dump").await;
    let (_all, all_pid) = pg.session("app", "pw", "postgres", "pg_dumpall").await;

    let (status, body) = server
        .operator_get(
            "/v1/sessions?logins=app&exclude_application_names=pg_dump*&include_query=true",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: Vec<i64> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, [i64::from(api_pid)], "{body}");
    assert!(body["sessions"][0]["query"].is_string(), "{body}");
    assert_eq!(body["summary"][0]["sessions"], 1, "{body}");
    assert_eq!(body["summary"][0]["open_transactions"], 0, "{body}");

    let (status, body) = server
        .operator_get("/v1/sessions?application_names=pg_dump&application_names=pg_dumpall")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut listed: Vec<i64> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    listed.sort();
    let mut want = vec![i64::from(dump_pid), i64::from(all_pid)];
    want.sort();
    assert_eq!(listed, want, "{body}");
    assert!(body["sessions"][0].get("query").is_none(), "{body}");

    for bad in [
        "/v1/sessions?exclude_login=app",
        "/v1/sessions?client_addrs=db-host",
        "/v1/sessions?states=sleeping",
        "/v1/sessions?started_after=2026-12-06T12:00:00Z&started_before=2026-12-06T11:00:00Z",
    ] {
        let (status, body) = server.operator_get(bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    server.stop().await;
}
