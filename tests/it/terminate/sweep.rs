//! The sweep, against a real PostgreSQL with logins made the way Vault makes dynamic ones:
//! sessions of dropped logins and of expired logins matching the pattern end, every other
//! session survives, and the audit trail says why. Run from the CLI and by the sweeper.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::support::sever::{Workspace, cli, create_admin, sorted, stderr, stdout};
use serde_json::Value;
use sever::audit::AuditRecord;
use sever_testkit::pg::TestPostgres;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

/// Creates a login as Vault's PostgreSQL plugin does, `VALID UNTIL` `valid_for` from now on
/// the database's clock (`None`: no expiry).
async fn create_dynamic(pg: &TestPostgres, login: &str, valid_for: Option<&str>) {
    let until = valid_for.map_or_else(
        || "''".to_owned(),
        |v| format!("' VALID UNTIL ' || quote_literal(clock_timestamp() + interval '{v}')"),
    );
    pg.exec(&format!(
        "DO $$ BEGIN EXECUTE 'CREATE ROLE ' || quote_ident('{login}') || \
         ' LOGIN PASSWORD ''pw''' || {until}; END $$"
    ))
    .await;
}

/// Waits until every one of `logins` is past its `VALID UNTIL` on the database's clock.
async fn wait_expired(pg: &TestPostgres, logins: &[&str]) {
    let list = logins
        .iter()
        .map(|l| format!("'{l}'"))
        .collect::<Vec<_>>()
        .join(", ");
    for _ in 0..200 {
        let mut conn = sqlx::PgConnection::connect_with(
            &sqlx::postgres::PgConnectOptions::new_without_pgpass()
                .host("127.0.0.1")
                .port(pg.port())
                .username("postgres")
                .database("postgres")
                .ssl_mode(sqlx::postgres::PgSslMode::Disable),
        )
        .await
        .unwrap();
        let pending: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ({list}) \
             AND (rolvaliduntil IS NULL OR rolvaliduntil >= now())"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let _ = conn.close().await;
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{logins:?} did not expire");
}

/// What a starting sever does first: learn every target's roles (mapped, protected,
/// superusers, its own, those matching a sweep pattern), recorded in the store.
async fn learn(config: &std::path::Path) {
    sever::install_crypto_provider();
    let config = sever::config::Config::load(config).unwrap();
    let ctx = sever::context::Context::build(config).await.unwrap();
    ctx.learn_logins().await;
}

/// The sessions of one test: pids by role.
struct Fixture {
    pg: TestPostgres,
    ws: Workspace,
    config: PathBuf,
    /// Connections kept open for the test's length.
    _conns: Vec<sqlx::PgConnection>,
    valid: i32,
    infinite: i32,
    no_expiry: i32,
    expired: i32,
    dropped: i32,
    app: i32,
    protected: i32,
}

async fn fixture(interval: &str) -> Fixture {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    create_dynamic(&pg, "v-token-app-x1", Some("1 hour")).await;
    create_dynamic(&pg, "v-token-app-x2", Some("2 seconds")).await;
    create_dynamic(&pg, "v-token-app-x3", Some("1 hour")).await;
    create_dynamic(&pg, "v-token-app-inf", None).await;
    pg.exec("ALTER ROLE \"v-token-app-inf\" VALID UNTIL 'infinity'")
        .await;
    create_dynamic(&pg, "v-token-app-none", None).await;
    create_dynamic(&pg, "v-protected", Some("2 seconds")).await;
    create_dynamic(&pg, "app", Some("2 seconds")).await;

    let mut conns = Vec::new();
    let mut open = async |login: &str| {
        let (conn, pid) = pg.session(login, "pw", "postgres", "svc").await;
        conns.push(conn);
        pid
    };
    let expired = open("v-token-app-x2").await;
    let protected = open("v-protected").await;
    let app = open("app").await;
    let valid = open("v-token-app-x1").await;
    let dropped = open("v-token-app-x3").await;
    let infinite = open("v-token-app-inf").await;
    let no_expiry = open("v-token-app-none").await;

    let ws = Workspace::new();
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .set("targets.main.protected_logins", vec!["v-protected"])
        .set("targets.main.sweep.pattern", "v-%")
        .set("targets.main.sweep.interval", interval);
    let config = ws.write_config(&ws.target_config(config, "plain", &pg).toml());
    // sever learns the dynamic logins (they match the pattern) before the one is dropped: an
    // orphan is swept only when sever knew it matched.
    learn(&config).await;
    // Vault's revocation: the role goes, its session stays.
    pg.exec("DROP ROLE \"v-token-app-x3\"").await;
    // PostgreSQL checks VALID UNTIL only at login: these sessions outlive the expiry.
    wait_expired(&pg, &["v-token-app-x2", "v-protected", "app"]).await;
    Fixture {
        pg,
        ws,
        config,
        _conns: conns,
        valid,
        infinite,
        no_expiry,
        expired,
        dropped,
        app,
        protected,
    }
}

fn pids(target: &Value, key: &str) -> Vec<i64> {
    let mut pids: Vec<i64> = target[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {target}"))
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    pids.sort();
    pids
}

fn detail(record: &AuditRecord) -> Value {
    serde_json::from_str(&record.detail).unwrap()
}

#[tokio::test]
async fn sweep_ends_sessions_of_dropped_and_expired_logins_only() {
    let f = fixture("1h").await;
    let swept = sorted(&[f.expired, f.dropped]);
    let reasons = BTreeMap::from([
        (f.expired.to_string(), "login_expired"),
        (f.dropped.to_string(), "login_dropped"),
    ]);
    let survivors = [f.valid, f.infinite, f.no_expiry, f.app, f.protected];

    // Dry run: exactly the expired and the dropped login's sessions, nothing changed.
    let out = cli(&f.config, &["sweep", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reports: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(
        reports.len(),
        1,
        "only the target with a sweep: {reports:?}"
    );
    let report = &reports[0];
    assert_eq!(report["origin"], "sweep");
    assert_eq!(report["target"], "main");
    assert_eq!(report["pattern"], "v-%");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["status"], "completed");
    let t = &report["targets"][0];
    assert_eq!(pids(t, "matched"), swept, "{t}");
    assert!(pids(t, "terminated").is_empty(), "{t}");
    // A protected login is spared even when expired, and the report says so.
    let skipped = t["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{t}");
    assert_eq!(skipped[0]["pid"], f.protected);
    assert_eq!(skipped[0]["reason"], "protected");
    for (pid, why) in &reasons {
        assert_eq!(t["sweep_reasons"][pid], *why, "{t}");
    }
    let orphan = t["matched"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pid"] == f.dropped)
        .unwrap();
    // The name it had when sever learned it.
    assert_eq!(orphan["login"], "v-token-app-x3", "{orphan}");
    assert!(orphan["login_id"].is_string());
    for pid in [f.expired, f.dropped].iter().chain(&survivors) {
        assert!(f.pg.is_alive(*pid).await, "dry run ended {pid}");
    }

    // The human summary says why, too.
    let out = cli(&f.config, &["sweep", "--dry-run", "--target", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("would terminate: login_expired"), "{text}");
    assert!(text.contains("would terminate: login_dropped"), "{text}");
    assert!(text.contains("skipped: protected"), "{text}");

    // A target without a sweep, or no such target: refused, nothing done.
    let out = cli(&f.config, &["sweep", "--target", "plain"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("target \"plain\" has no sweep configured"),
        "{}",
        stderr(&out)
    );
    let out = cli(
        &f.config,
        &["sweep", "--target", "main", "--target", "nope"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown target \"nope\""),
        "{}",
        stderr(&out)
    );
    assert!(f.pg.is_alive(f.expired).await && f.pg.is_alive(f.dropped).await);

    // The real thing.
    let out = cli(&f.config, &["sweep", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reports: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let report = &reports[0];
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(report["dry_run"], false);
    let t = &report["targets"][0];
    assert_eq!(pids(t, "terminated"), swept, "{t}");
    assert!(pids(t, "remaining").is_empty(), "{t}");
    for pid in [f.expired, f.dropped] {
        assert!(
            f.pg.wait_gone(pid, Duration::from_secs(5)).await,
            "{pid} survived"
        );
    }
    for pid in survivors {
        assert!(f.pg.is_alive(pid).await, "{pid} was swept");
    }
    let action_id = report["action_id"].as_str().unwrap().to_owned();

    // The audit trail: planned as a sweep, each terminated session with its reason.
    let audit = f.ws.audit().await;
    let records = audit
        .list(&sever::audit::ListFilter {
            action_id: Some(action_id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(records.iter().all(|r| r.actor == "cli:responder"));
    let planned = detail(&records[0]);
    assert_eq!(records[0].kind, "action.planned");
    assert_eq!(planned["origin"], "sweep");
    assert_eq!(planned["target"], "main");
    assert_eq!(planned["pattern"], "v-%");
    assert_eq!(records.last().unwrap().kind, "action.completed");
    let terminated: BTreeMap<String, String> = records
        .iter()
        .filter(|r| r.kind == "session.terminated")
        .map(|r| {
            let d = detail(r);
            assert_eq!(d["target"], "main");
            (
                d["pid"].to_string(),
                d["sweep_reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: BTreeMap<String, String> = reasons
        .iter()
        .map(|(pid, why)| (pid.clone(), (*why).to_owned()))
        .collect();
    assert_eq!(terminated, expected);
    let skipped: Vec<Value> = records
        .iter()
        .filter(|r| r.kind == "session.skipped")
        .map(detail)
        .collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["reason"], "protected");
    assert_eq!(skipped[0]["sweep_reason"], "login_expired");

    // Nothing left to sweep.
    let out = cli(&f.config, &["sweep"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("main: found 1, terminated 0, skipped 1"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn the_sweeper_sweeps_on_its_interval_until_stopped() {
    let f = fixture("500ms").await;
    sever::install_crypto_provider();
    let config = sever::config::Config::load(&f.config).unwrap();
    let ctx = Arc::new(sever::context::Context::build(config).await.unwrap());
    let stop = CancellationToken::new();
    let sweeper = tokio::spawn(sever::sweep::run_sweeper(ctx.clone(), stop.clone()));

    // The first sweep comes one interval after start-up, not at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(f.pg.is_alive(f.expired).await && f.pg.is_alive(f.dropped).await);

    tokio::time::sleep(Duration::from_millis(1700)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), sweeper)
        .await
        .expect("the sweeper stops when cancelled")
        .unwrap();

    for pid in [f.expired, f.dropped] {
        assert!(
            f.pg.wait_gone(pid, Duration::from_secs(5)).await,
            "{pid} survived"
        );
    }
    for pid in [f.valid, f.infinite, f.no_expiry, f.app, f.protected] {
        assert!(f.pg.is_alive(pid).await, "{pid} was swept");
    }

    let records = ctx.audit.list(&Default::default()).await.unwrap();
    let sweeps: Vec<&str> = records
        .iter()
        .filter(|r| r.kind == "action.planned" && detail(r)["origin"] == "sweep")
        .filter_map(|r| r.action_id.as_deref())
        .collect();
    assert!(
        sweeps.len() >= 2,
        "one sweep per interval, not one in all: {sweeps:?}"
    );
    let completed: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| {
            r.kind == "action.completed"
                && r.actor == "sweeper"
                && r.action_id.as_deref().is_some_and(|a| sweeps.contains(&a))
        })
        .collect();
    assert_eq!(completed.len(), sweeps.len(), "every sweep completed");
    assert!(completed.iter().all(|r| detail(r)["status"] == "completed"));
    let terminated: Vec<Value> = records
        .iter()
        .filter(|r| r.kind == "session.terminated" && r.actor == "sweeper")
        .map(detail)
        .collect();
    assert_eq!(terminated.len(), 2, "{terminated:?}");
}

#[tokio::test]
async fn a_sweep_sever_may_not_signal_reports_each_session_and_exits_incomplete() {
    let pg = TestPostgres::start();
    // Can see sessions but not signal them: the set-based statement is refused, and the
    // one-by-one fallback reports every session.
    pg.exec("CREATE ROLE sever_admin LOGIN PASSWORD 'severadminpw' IN ROLE pg_read_all_stats")
        .await;
    create_dynamic(&pg, "v-gone", None).await;
    create_dynamic(&pg, "v-stale", Some("2 seconds")).await;
    let (_c1, dropped) = pg.session("v-gone", "pw", "postgres", "svc").await;
    let (_c2, expired) = pg.session("v-stale", "pw", "postgres", "svc").await;
    let ws = Workspace::new();
    let config = ws.write_config(
        &ws.target_config(ws.config(), "main", &pg)
            .set("targets.main.sweep.pattern", "v-%")
            .set("targets.main.sweep.interval", "1h")
            .toml(),
    );
    learn(&config).await;
    pg.exec("DROP ROLE \"v-gone\"").await;
    wait_expired(&pg, &["v-stale"]).await;

    let out = cli(&config, &["sweep", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(sever::cli::EXIT_INCOMPLETE)),
        "{}",
        stderr(&out)
    );
    let reports: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let t = &reports[0]["targets"][0];
    assert_eq!(reports[0]["status"], "incomplete");
    assert_eq!(pids(t, "failed"), sorted(&[expired, dropped]), "{t}");
    assert!(
        t["failed"].as_array().unwrap().iter().all(|f| f["error"]
            .as_str()
            .unwrap()
            .contains("grant pg_signal_backend")),
        "{t}"
    );
    assert!(pg.is_alive(expired).await && pg.is_alive(dropped).await);
    let failed: BTreeMap<String, String> = ws
        .audit()
        .await
        .list(&sever::audit::ListFilter {
            kind: Some("session.failed".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let d = detail(r);
            (
                d["pid"].to_string(),
                d["sweep_reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        BTreeMap::from([
            (expired.to_string(), "login_expired".to_owned()),
            (dropped.to_string(), "login_dropped".to_owned()),
        ])
    );
}

/// A target `main` on `pg` sweeping `v-%` with `v-keep` protected, and what the next sweep
/// reports; the sessions of `v-keep` (protected), `v-root` (a superuser) and `v-dyn` (a
/// dynamic login) are opened before either.
struct Learning {
    pg: TestPostgres,
    ws: Workspace,
    config: PathBuf,
    _conns: Vec<sqlx::PgConnection>,
    keep: i32,
    root: i32,
    dynamic: i32,
}

async fn learning() -> Learning {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    create_dynamic(&pg, "v-keep", None).await;
    create_dynamic(&pg, "v-dyn", None).await;
    pg.exec("CREATE ROLE \"v-root\" SUPERUSER LOGIN PASSWORD 'pw'")
        .await;
    let (c1, keep) = pg.session("v-keep", "pw", "postgres", "svc").await;
    let (c2, root) = pg.session("v-root", "pw", "postgres", "svc").await;
    let (c3, dynamic) = pg.session("v-dyn", "pw", "postgres", "svc").await;
    let ws = Workspace::new();
    let config = ws.write_config(
        &ws.target_config(ws.config(), "main", &pg)
            .set("targets.main.protected_logins", vec!["v-keep"])
            .set("targets.main.sweep.pattern", "v-%")
            .set("targets.main.sweep.interval", "1h")
            .toml(),
    );
    Learning {
        pg,
        ws,
        config,
        _conns: vec![c1, c2, c3],
        keep,
        root,
        dynamic,
    }
}

/// Each skipped session's pid and reason in a target report.
fn skips(t: &Value) -> BTreeMap<i64, String> {
    t["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["pid"].as_i64().unwrap(),
                s["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn logins_dropped_before_sever_learned_them_are_spared_and_reported_unknown() {
    let l = learning().await;
    // Dropped before sever ever ran: nothing tells a protected login or a superuser apart
    // from a dynamic one any more.
    l.pg.exec("DROP ROLE \"v-keep\"; DROP ROLE \"v-root\"")
        .await;

    let out = cli(&l.config, &["sweep", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reports: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let t = &reports[0]["targets"][0];
    assert!(pids(t, "terminated").is_empty(), "{t}");
    assert_eq!(
        skips(t),
        BTreeMap::from([
            (i64::from(l.keep), "login_unknown".to_owned()),
            (i64::from(l.root), "login_unknown".to_owned()),
        ]),
        "{t}"
    );
    assert_eq!(t["sweep_reasons"][l.keep.to_string()], "login_dropped");
    for pid in [l.keep, l.root, l.dynamic] {
        assert!(l.pg.is_alive(pid).await, "{pid} was swept");
    }
    // On the record too.
    let skipped: Vec<Value> = l.ws.records("session.skipped").await;
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped.iter().all(|d| d["reason"] == "login_unknown"));
}

#[tokio::test]
async fn logins_learned_before_their_drop_keep_their_class_and_dynamic_ones_are_swept() {
    let l = learning().await;
    // A sweep learns right before it runs: this one finds nothing, and learns all three.
    let out = cli(&l.config, &["sweep", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reports: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(reports[0]["targets"][0]["found"], 0, "{reports}");

    l.pg.exec("DROP ROLE \"v-keep\"; DROP ROLE \"v-root\"; DROP ROLE \"v-dyn\"")
        .await;
    let out = cli(&l.config, &["sweep", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reports: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let t = &reports[0]["targets"][0];
    assert_eq!(pids(t, "terminated"), vec![i64::from(l.dynamic)], "{t}");
    assert_eq!(
        skips(t),
        BTreeMap::from([
            (i64::from(l.keep), "protected".to_owned()),
            (i64::from(l.root), "superuser".to_owned()),
        ]),
        "{t}"
    );
    assert!(l.pg.wait_gone(l.dynamic, Duration::from_secs(5)).await);
    assert!(l.pg.is_alive(l.keep).await && l.pg.is_alive(l.root).await);

    // The next learning forgets the dynamic login, gone with its last session; the spared
    // ones are kept while their sessions last.
    let out = cli(&l.config, &["sweep", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let store = sqlx::SqlitePool::connect(&format!("sqlite://{}", l.ws.path("sever.db").display()))
        .await
        .unwrap();
    let learned: Vec<String> =
        sqlx::query_scalar("SELECT login FROM learned_roles WHERE target = 'main' ORDER BY login")
            .fetch_all(&store)
            .await
            .unwrap();
    assert!(!learned.iter().any(|l| l == "v-dyn"), "{learned:?}");
    assert!(learned.iter().any(|l| l == "v-keep"), "{learned:?}");
    assert!(learned.iter().any(|l| l == "v-root"), "{learned:?}");
}
