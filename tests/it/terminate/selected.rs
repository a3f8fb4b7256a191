//! Revocations that take the session selector, against a real PostgreSQL through the real
//! server: a decision and a reason for every session, the dry run that matches the real
//! run, the modes (cancel, graceful) on sessions held in those states, and the guard rails.

use std::time::Duration;

use crate::support::sever::{TestServer, Workspace, create_admin, pids, target_report};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;
use sqlx::{Connection, Executor};

const GONE: Duration = Duration::from_secs(5);

/// `pid → (decision, rule)` from one target's `decisions`.
fn decisions(report: &Value, target: &str) -> Vec<(i64, String)> {
    let t = target_report(report, target);
    let mut d: Vec<(i64, String)> = t["decisions"]
        .as_array()
        .unwrap_or_else(|| panic!("no decisions in {t}"))
        .iter()
        .map(|d| {
            let word = d["decision"].as_str().unwrap().to_owned();
            let word = match d["rule"].as_str() {
                Some(rule) => format!("{word} ({rule})"),
                None => word,
            };
            (d["pid"].as_i64().unwrap(), word)
        })
        .collect();
    d.sort();
    d
}

async fn server(pg: &TestPostgres, ws: &Workspace) -> TestServer {
    let config = ws.target_config(ws.config(), "main", pg).toml();
    TestServer::start(&ws.write_config(&config)).await
}

#[tokio::test]
async fn every_session_gets_a_decision_and_the_dry_run_is_what_the_real_run_does() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let server = server(&pg, &ws).await;
    let (_api, api) = pg.session("app", "pw", "postgres", "orders-api").await;
    let (_dump, dump) = pg.session("app", "pw", "postgres", "pg_dump").await;
    let (mut sleeper, report_pid) = pg.session("app", "pw", "postgres", "report").await;
    let sleeping = tokio::spawn(async move {
        let _ = sleeper.execute("SELECT pg_sleep(60) /* card 4111 */").await;
    });
    pg.exec("CREATE ROLE boss SUPERUSER LOGIN PASSWORD 'pw'")
        .await;
    let (_su, _) = pg.session("boss", "pw", "postgres", "psql").await;
    let selector = json!({
        "logins": ["app", "boss"],
        "exclude_application_names": ["pg_*"],
        "targets": ["main"],
        "reason": "INC-18",
    });

    let mut dry = selector.clone();
    dry["dry_run"] = json!(true);
    let (status, preview) = server.operator_post("/v1/revocations", &dry).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    let mut expected = vec![
        (i64::from(api), "would_terminate".to_owned()),
        (
            i64::from(dump),
            "excluded (exclude_application_names: pg_*)".to_owned(),
        ),
        (i64::from(report_pid), "would_terminate".to_owned()),
    ];
    expected.sort();
    let found = decisions(&preview, "main");
    for e in &expected {
        assert!(found.contains(e), "{e:?} not in {found:?}");
    }
    assert!(
        found.iter().any(|(_, d)| d == "superuser"),
        "the superuser's session is reported, spared: {found:?}"
    );
    for pid in [api, dump, report_pid] {
        assert!(pg.is_alive(pid).await, "a dry run ends nothing ({pid})");
    }

    let (status, done) = server.operator_post("/v1/revocations", &selector).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        pids(&done, "main", "terminated"),
        pids(&preview, "main", "matched"),
        "the real run ends exactly what the dry run listed"
    );
    assert!(pg.wait_gone(api, GONE).await && pg.wait_gone(report_pid, GONE).await);
    assert!(
        pg.is_alive(dump).await,
        "pg_dump is spared by its exclusion"
    );
    sleeping.await.unwrap();

    // The audit record of each ended session carries its selector and mode, never the query.
    let ended = ws.records("session.terminated").await;
    assert_eq!(ended.len(), 2, "{ended:?}");
    for detail in &ended {
        let r = detail;
        assert_eq!(detail["mode"], "terminate", "{r}");
        assert_eq!(
            detail["selected_by"]["exclude_application_names"],
            json!(["pg_*"])
        );
        assert!(
            !r.to_string().contains("4111"),
            "query text in the trail: {r}"
        );
    }
    let skipped = ws.records("session.skipped").await;
    assert!(
        skipped
            .iter()
            .any(|r| r["reason"] == "excluded" && r["rule"] == "exclude_application_names: pg_*"),
        "{skipped:?}"
    );
}

#[tokio::test]
async fn cancel_ends_the_running_statement_and_the_connection_stays_usable() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let server = server(&pg, &ws).await;
    let (mut sleeper, sleeper_pid) = pg.session("app", "pw", "postgres", "report").await;
    let (_idle, idle_pid) = pg.session("app", "pw", "postgres", "web").await;
    let sleeping = tokio::spawn(async move {
        let result = sleeper.execute("SELECT pg_sleep(60)").await;
        (sleeper, result)
    });
    let (_, listing) = wait_for_state(&server, sleeper_pid, "active").await;
    assert_eq!(listing, "active");

    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "reason": "runaway report",
                    "mode": "cancel"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(
        decisions(&report, "main"),
        [
            (i64::from(sleeper_pid), "cancelled".to_owned()),
            (i64::from(idle_pid), "no_statement".to_owned())
        ]
    );
    let (mut sleeper, result) = tokio::time::timeout(GONE, sleeping).await.unwrap().unwrap();
    let e = result.expect_err("the statement was cancelled");
    assert!(e.to_string().contains("canceling statement"), "{e}");
    sleeper.ping().await.expect("the connection stays");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut sleeper)
        .await
        .unwrap();
    assert_eq!(one, 1);
    assert!(pg.is_alive(idle_pid).await);
    assert_eq!(ws.records("session.cancelled").await.len(), 1);
}

#[tokio::test]
async fn graceful_spares_a_transaction_that_commits_and_ends_one_that_holds_on() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    pg.exec("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0), (2, 0); GRANT ALL ON t TO app")
        .await;
    let ws = Workspace::new();
    let server = server(&pg, &ws).await;
    // Idle in transaction when the grace starts, commits inside it.
    let (mut committer, committer_pid) = pg.session("app", "pw", "postgres", "batch").await;
    committer
        .execute("BEGIN; UPDATE t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    let committing = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let result = committer.execute("COMMIT").await.map(drop);
        (committer, result)
    });
    // Runs a statement inside its transaction past the grace.
    let (mut holder, holder_pid) = pg.session("app", "pw", "postgres", "batch").await;
    holder
        .execute("BEGIN; UPDATE t SET v = 1 WHERE id = 2")
        .await
        .unwrap();
    // The client keeps its connection after the cancel, as a pool would.
    let holding = tokio::spawn(async move {
        let result = holder.execute("SELECT pg_sleep(60)").await.map(drop);
        (holder, result)
    });
    wait_for_state(&server, holder_pid, "active").await;

    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "in_transaction_for": "0s", "targets": ["main"],
                    "reason": "schema change", "mode": "graceful", "grace": "1500ms"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        decisions(&report, "main"),
        [
            (
                i64::from(committer_pid),
                "excluded (in_transaction_for)".to_owned()
            ),
            (i64::from(holder_pid), "terminated".to_owned())
        ],
        "{report}"
    );
    assert_eq!(pids(&report, "main", "cancelled"), [i64::from(holder_pid)]);
    let (mut committer, committed) = committing.await.unwrap();
    committed.expect("the commit inside the grace succeeds: never signalled");
    committer.ping().await.expect("it survives");
    assert!(pg.wait_gone(holder_pid, GONE).await);
    let (_holder, cancelled) = holding.await.unwrap();
    assert!(cancelled.is_err(), "its statement was cancelled");
    let v: i32 = sqlx::query_scalar("SELECT v FROM t WHERE id = 1")
        .fetch_one(&mut committer)
        .await
        .unwrap();
    assert_eq!(v, 1, "the committed work stays");
}

#[tokio::test]
async fn the_guard_rails_refuse_and_expect_count_stops_a_grown_selection() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("a", "pw").await;
    pg.create_login("b", "pw").await;
    pg.exec("CREATE DATABASE other").await;
    let ws = Workspace::new();
    let server = server(&pg, &ws).await;
    let _a = pg.open_sessions("a", "pw", 2).await;
    let (_b, b_pid) = pg.session("b", "pw", "other", "").await;
    let post = |body: Value| {
        let server = &server;
        async move { server.operator_post("/v1/revocations", &body).await }
    };
    let base = json!({"targets": ["main"], "reason": "cleanup"});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };

    for (body, needle) in [
        (
            with(json!({"databases": ["postgres"]})),
            "at least one login",
        ),
        (
            with(json!({"all_logins": true, "exclude_logins": ["a"], "dry_run": true})),
            "narrows",
        ),
        (
            with(json!({"all_logins": true, "application_names": ["*"], "dry_run": true})),
            "narrows",
        ),
        (
            with(json!({"all_logins": true, "databases": ["postgres"]})),
            "expect_count",
        ),
    ] {
        let (status, answer) = post(body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(answer.to_string().contains(needle), "{body}: {answer}");
    }

    // Every session sever could end: refused, dry run or not.
    let every = with(json!({"all_logins": true, "client_addrs": ["127.0.0.0/8"], "dry_run": true}));
    let (status, answer) = post(every).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "incomplete", "{answer}");
    assert!(answer.to_string().contains("every one"), "{answer}");

    // The dry run counts; the real run carries the count and is refused once it grew.
    let narrowed = with(json!({"all_logins": true, "databases": ["postgres"], "dry_run": true}));
    let (status, preview) = post(narrowed).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    let count = pids(&preview, "main", "matched").len();
    assert_eq!(count, 2, "{preview}");
    let _late = pg.open_sessions("a", "pw", 1).await;
    let grown = with(json!({"all_logins": true, "databases": ["postgres"], "expect_count": count}));
    let (status, answer) = post(grown).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer.to_string().contains("grew"), "{answer}");
    assert_eq!(ws.records("session.terminated").await.len(), 0);
    let fresh = with(json!({"all_logins": true, "databases": ["postgres"], "expect_count": 3}));
    let (status, answer) = post(fresh).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(pids(&answer, "main", "terminated").len(), 3, "{answer}");
    assert!(
        pg.is_alive(b_pid).await,
        "the other database's session stays"
    );
}

/// Polls the listing until session `pid` shows `state`; the listing's session.
async fn wait_for_state(server: &TestServer, pid: i32, state: &str) -> (Value, String) {
    for _ in 0..200 {
        let (status, listing) = server.operator_get("/v1/sessions?target=main").await;
        assert_eq!(status, StatusCode::OK, "{listing}");
        if let Some(s) = listing["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["pid"] == pid)
            && s["state"] == state
        {
            return (s.clone(), state.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("session {pid} never showed {state}");
}

#[tokio::test]
async fn a_graceful_credential_lets_a_transaction_finish_before_its_rotation_ends_it() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    pg.exec("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0); GRANT ALL ON t TO app")
        .await;
    let ws = Workspace::new();
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .credential("orders", &[("main", "app")])
        .set("credentials.orders.mode", "graceful")
        .set("credentials.orders.grace", "3s")
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let (_idle, idle_pid) = pg.session("app", "pw", "postgres", "web").await;
    let (mut writer, writer_pid) = pg.session("app", "pw", "postgres", "batch").await;
    writer
        .execute("BEGIN; UPDATE t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    // The client keeps its connection after the commit, as a pool would.
    let committing = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let result = writer.execute("COMMIT").await.map(drop);
        (writer, result)
    });

    let started = std::time::Instant::now();
    let (status, report) = server
        .event(&json!({"credential": "orders", "kind": "rotated"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["mode"], "graceful", "{report}");
    let (_writer, committed) = committing.await.unwrap();
    committed.expect("the transaction commits within the grace, never signalled");
    let mut ended = vec![i64::from(idle_pid), i64::from(writer_pid)];
    ended.sort();
    assert_eq!(pids(&report, "main", "terminated"), ended, "{report}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "ended once the transaction finished, not at the grace's end"
    );
    assert!(pg.wait_gone(idle_pid, GONE).await && pg.wait_gone(writer_pid, GONE).await);
    let mut conn = pg.session("postgres", "", "postgres", "").await.0;
    let v: i32 = sqlx::query_scalar("SELECT v FROM t WHERE id = 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, 1, "the commit landed before the session was ended");
}

#[tokio::test]
async fn values_sever_cannot_read_are_spared_and_reported_unknown() {
    let pg = TestPostgres::start();
    // Without pg_read_all_stats: other roles' state, start and address read as NULL.
    pg.exec("CREATE ROLE blind LOGIN PASSWORD 'pw' IN ROLE pg_signal_backend")
        .await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let url = ws.secret_path("main.url", &pg.url("blind", "pw", "postgres"));
    let config = ws.config().target_postgres("main", &url).toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let (_c, app) = pg.session("app", "pw", "postgres", "web").await;
    for extra in [
        json!({"states": ["idle"]}),
        json!({"client_addrs": ["127.0.0.0/8"]}),
    ] {
        let mut body = json!({"login": "app", "targets": ["main"], "reason": "r"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, report) = server.operator_post("/v1/revocations", &body).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        let found = decisions(&report, "main");
        assert_eq!(found.len(), 1, "{report}");
        assert_eq!(found[0].0, i64::from(app));
        assert!(found[0].1.starts_with("unknown_"), "{found:?}");
        assert!(pg.is_alive(app).await, "an unreadable value never selects");
    }
}
