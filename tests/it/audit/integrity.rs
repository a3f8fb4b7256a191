//! Tampering with the audit store by someone who can write it but has no checkpoint key, and
//! edits that break its schema, against the real server (in-process) and the real CLI:
//! `audit verify` must exit 2 and name the first bad record or checkpoint, the server must not
//! chain its keyed checkpoints onto a forgery, and replicas sharing a store must not take each
//! other's checkpoints for one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::config::{ConfigBuilder, file};
use crate::support::sever::{TestServer, Workspace, cli, stderr, stdout};
use serde_json::{Value, json};
use sever::audit::{Audit, AuditRecord, Entry, GENESIS, Kind, ListFilter, record_hash};
use sever_testkit::pg::TestPostgres;

const BROKEN: Option<i32> = Some(sever::cli::EXIT_AUDIT_BROKEN as i32);

/// A keyed config on `store_url` (TOML-quoted), and the same store without the key: what
/// someone who can write the store but lacks the key can run.
fn configs(ws: &Workspace, store_url: &str, interval: &str) -> (PathBuf, PathBuf) {
    let key = ws.secret_path("checkpoint.key", &"k".repeat(40));
    let base = ws
        .config()
        .merge_toml(&format!("[store]\nurl = {store_url}\n"))
        .set("audit.checkpoint_interval", interval);
    let forger = ws.path("forger.toml");
    std::fs::write(&forger, base.toml()).unwrap();
    let keyed = ws.write_config(&base.set("audit.checkpoint_key", file(&key)).toml());
    (keyed, forger)
}

fn sqlite_url(ws: &Workspace) -> String {
    format!("sqlite://{}?mode=rwc", ws.path("sever.db").display())
}

async fn pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.unwrap()
}

async fn open_audit(url: &str) -> Audit {
    let url = secrecy::SecretString::from(url.to_owned());
    Audit::new(sever::store::Store::connect(&url).await.unwrap())
}

/// `(idx, prev_mac, mac, alg)` of every stored checkpoint.
async fn checkpoints(pool: &sqlx::AnyPool) -> Vec<(i64, String, String, String)> {
    sqlx::query_as("SELECT idx, prev_mac, mac, alg FROM audit_checkpoints ORDER BY idx")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The problem lines of `audit verify`'s output, in order.
fn problem_lines(out: &std::process::Output) -> Vec<String> {
    stdout(out)
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Deletes record `seq` and writes the rest anew, renumbered and rehashed: a perfect chain.
async fn delete_and_rechain(url: &str, pool: &sqlx::AnyPool, seq: i64) {
    let audit = open_audit(url).await;
    let records = audit.list(&ListFilter::default()).await.unwrap();
    sqlx::query("DELETE FROM audit_records")
        .execute(pool)
        .await
        .unwrap();
    let mut prev = GENESIS.to_owned();
    let kept = records.into_iter().filter(|r| r.seq != seq);
    for (i, r) in kept.enumerate() {
        let mut r = AuditRecord {
            seq: i as i64 + 1,
            prev_hash: prev.clone(),
            ..r
        };
        r.hash = record_hash(&prev, &r);
        prev = r.hash.clone();
        sqlx::query(
            "INSERT INTO audit_records (seq, id, at, kind, actor, action_id, detail, prev_hash, \
             hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(r.seq)
        .bind(&r.id)
        .bind(&r.at)
        .bind(&r.kind)
        .bind(&r.actor)
        .bind(&r.action_id)
        .bind(&r.detail)
        .bind(&r.prev_hash)
        .bind(&r.hash)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// Polls `/readyz` until `audit_chain` is `ok == want`; returns the body.
async fn await_audit_chain(server: &TestServer, want: bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = server.readyz().await;
        if body["audit_chain"]["ok"] == want {
            assert_eq!(status, reqwest::StatusCode::OK, "{body}");
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "audit_chain never {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn cli_ok(config: &Path, args: &[&str]) -> std::process::Output {
    let out = cli(config, args);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    out
}

#[tokio::test]
async fn a_trail_rewritten_under_forged_unkeyed_checkpoints_fails_verify_and_is_not_chained_onto() {
    let ws = Workspace::new();
    let url = sqlite_url(&ws);
    let (config, forger) = configs(&ws, &format!("{url:?}"), "1h");
    // Three records, a session.terminated in the middle, then checkpoints at start and stop.
    let audit = open_audit(&url).await;
    for kind in [
        Kind::ActionPlanned,
        Kind::SessionTerminated,
        Kind::ActionCompleted,
    ] {
        let entry = Entry::new(kind, "webhook", None, json!({"pid": 42}));
        audit.append(entry).await.unwrap();
    }
    let server = TestServer::start(&config).await;
    await_audit_chain(&server, true).await;
    server.stop().await;
    cli_ok(&config, &["audit", "verify", "--max-checkpoint-age", "1m"]);

    // The forgery: the session.terminated record deleted and the chain rewritten, every
    // checkpoint deleted, and unkeyed ones written over the new head with sever itself.
    let pool = pool(&url).await;
    delete_and_rechain(&url, &pool, 2).await;
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&pool)
        .await
        .unwrap();
    cli_ok(&forger, &["audit", "checkpoint"]);
    cli_ok(&forger, &["audit", "checkpoint"]);

    let verify = ["audit", "verify", "--max-checkpoint-age", "1m"];
    let out = cli(&config, &verify);
    assert_eq!(out.status.code(), BROKEN, "{}", stdout(&out));
    let problems = problem_lines(&out);
    assert!(
        problems[0].starts_with("checkpoint 1: it is unkeyed"),
        "{problems:?}"
    );
    assert!(!stdout(&out).contains("record seq"), "the chain is intact");

    // Restarted, the server passes over the forgery: a new chain, and readiness says why.
    let server = TestServer::start(&config).await;
    let ready = await_audit_chain(&server, false).await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    let error = ready["audit_chain"]["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "audit trail tampered with: checkpoint 2, the store's newest, cannot be trusted"
        ),
        "{error}"
    );
    server.stop().await;
    let stored = checkpoints(&pool).await;
    assert_eq!(stored.len(), 4, "{stored:?}");
    assert_eq!((stored[2].0, stored[2].1.as_str()), (3, GENESIS));
    assert_eq!(stored[2].3, "hmac-sha256");
    // Its stop checkpoint chains onto its own, never onto the forged checkpoint 2.
    assert_eq!(stored[3].1, stored[2].2);

    let out = cli(&config, &verify);
    assert_eq!(out.status.code(), BROKEN, "{}", stdout(&out));
    let problems = problem_lines(&out);
    assert!(
        problems[0].starts_with("checkpoint 1: it is unkeyed"),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("checkpoint 3: it does not chain to checkpoint 2")),
        "{problems:?}"
    );
    // Nothing here chains a keyed checkpoint onto an unkeyed one: there is no pin to offer.
    assert!(!stdout(&out).contains("unkeyed_checkpoints_through = {"));
    // `audit checkpoint` by hand raises the same alarm.
    cli_ok(&forger, &["audit", "checkpoint"]);
    let out = cli(&config, &["audit", "checkpoint"]);
    assert_eq!(out.status.code(), BROKEN, "{}", stderr(&out));
    assert!(stderr(&out).contains("audit trail tampered with: checkpoint 5"));
    pool.close().await;
}

#[tokio::test]
async fn a_running_server_chains_around_a_checkpoint_forged_past_its_own() {
    let ws = Workspace::new();
    let url = sqlite_url(&ws);
    let (config, forger) = configs(&ws, &format!("{url:?}"), "1h");
    let server = TestServer::start(&config).await;
    let pool = pool(&url).await;
    // Its start checkpoint, then one forged past it while it runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    while checkpoints(&pool).await.is_empty() {
        assert!(Instant::now() < deadline, "no start checkpoint");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    cli_ok(&forger, &["audit", "checkpoint"]);
    server.stop().await;

    let stored = checkpoints(&pool).await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert_eq!(stored[1].3, "sha256");
    // The stop checkpoint chains onto the server's own start checkpoint.
    assert_eq!(stored[2].1, stored[0].2);
    let out = cli(&config, &["audit", "verify"]);
    assert_eq!(out.status.code(), BROKEN, "{}", stdout(&out));
    let problems = problem_lines(&out);
    assert!(
        problems[0].starts_with("checkpoint 2: it is unkeyed"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("checkpoint 3: it does not chain to checkpoint 2"),
        "{problems:?}"
    );
    pool.close().await;
}

#[tokio::test]
async fn two_replicas_on_one_postgres_store_keep_one_trusted_checkpoint_chain() {
    let pg = TestPostgres::start();
    pg.exec("CREATE DATABASE sever_store").await;
    let url = pg.superuser_url("sever_store");
    let ws = Workspace::new();
    let (config, _) = configs(&ws, &format!("{url:?}"), "1s");
    // Two servers, each with its own store pool and checkpoint writer, as two replicas.
    let (a, b) = tokio::join!(TestServer::start(&config), TestServer::start(&config));
    let pool = pool(&url).await;
    // Two at start, then one per replica per second: three intervals' worth.
    let deadline = Instant::now() + Duration::from_secs(10);
    while checkpoints(&pool).await.len() < 8 {
        assert!(Instant::now() < deadline, "{:?}", checkpoints(&pool).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for server in [&a, &b] {
        let (status, body) = server.readyz().await;
        assert_eq!(status, reqwest::StatusCode::OK);
        assert_eq!(body["audit_chain"]["ok"], true, "{body}");
    }
    tokio::join!(a.stop(), b.stop());
    let out = cli(&config, &["audit", "verify", "--max-checkpoint-age", "1m"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("audit trail OK"));
    pool.close().await;
}

/// A trail of three records and three checkpoints in `url`, with a config for it.
async fn small_trail(ws: &Workspace, url: &str) -> PathBuf {
    let audit = open_audit(url).await;
    let (config, _) = configs(ws, &format!("{url:?}"), "1h");
    for i in 0..3 {
        let entry = Entry::new(Kind::RequestRejected, "test", None, json!({"i": i}));
        audit.append(entry).await.unwrap();
        cli_ok(&config, &["audit", "checkpoint"]);
    }
    config
}

/// `edit` applied to a fresh trail makes `audit verify` exit 2 with `named` among its
/// problem lines.
async fn verify_names(ws: &Workspace, url: &str, edit: &str, named: &str) {
    let config = small_trail(ws, url).await;
    cli_ok(&config, &["audit", "verify"]);
    let pool = pool(url).await;
    sqlx::query(sqlx::AssertSqlSafe(edit.to_owned()))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let out = cli(&config, &["audit", "verify"]);
    assert_eq!(
        out.status.code(),
        BROKEN,
        "{edit}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let problems = problem_lines(&out);
    assert!(
        problems.iter().any(|p| p.starts_with(named)),
        "{edit}: {problems:?}"
    );
}

#[tokio::test]
async fn audit_verify_exits_2_naming_the_seq_for_edits_that_break_sqlite_types() {
    for (edit, named) in [
        (
            "UPDATE audit_records SET detail = CAST(detail AS BLOB) WHERE seq = 2",
            "record seq 2: its detail holds BLOB, not TEXT",
        ),
        (
            "UPDATE audit_checkpoints SET head_seq = 'two' WHERE idx = 2",
            "checkpoint 2: its head_seq holds TEXT",
        ),
        (
            "DROP TABLE audit_checkpoints",
            "checkpoint 1: the audit_checkpoints table cannot be read from checkpoint 1 on",
        ),
    ] {
        let ws = Workspace::new();
        verify_names(&ws, &sqlite_url(&ws), edit, named).await;
    }
    // A store that cannot be reached is still exit code 1.
    let ws = Workspace::new();
    let missing = format!("{:?}", "sqlite:///nonexistent-dir/sever.db?mode=rw");
    let (config, _) = configs(&ws, &missing, "1h");
    let out = cli(&config, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[tokio::test]
async fn audit_verify_exits_2_naming_the_seq_for_schema_edits_in_postgres() {
    let pg = TestPostgres::start();
    for (db, edit, named) in [
        (
            "dropped",
            "DROP TABLE audit_checkpoints",
            "checkpoint 1: the audit_checkpoints table cannot be read",
        ),
        (
            "altered",
            "ALTER TABLE audit_records ALTER COLUMN detail TYPE bytea \
             USING convert_to(detail, 'UTF8')",
            "record seq 1: its detail holds BLOB, not TEXT",
        ),
    ] {
        pg.exec(&format!("CREATE DATABASE {db}")).await;
        let ws = Workspace::new();
        verify_names(&ws, &pg.superuser_url(db), edit, named).await;
    }
    // Unreachable: nothing listens on the port of a stopped server.
    let url = pg.superuser_url("dropped");
    pg.stop();
    let ws = Workspace::new();
    let (config, _) = configs(&ws, &format!("{url:?}"), "1h");
    let out = cli(&config, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[tokio::test]
async fn unkeyed_history_from_before_the_key_fails_verify_until_the_printed_pin_is_set() {
    let ws = Workspace::new();
    let url = sqlite_url(&ws);
    let (config, unkeyed) = configs(&ws, &format!("{url:?}"), "1h");
    // Checkpoints written before the key was configured.
    cli_ok(&unkeyed, &["audit", "checkpoint"]);
    cli_ok(&unkeyed, &["audit", "checkpoint"]);

    let out = cli(&config, &["audit", "verify"]);
    assert_eq!(out.status.code(), BROKEN, "{}", stdout(&out));
    assert!(
        problem_lines(&out)[0].starts_with("checkpoint 1: it is unkeyed"),
        "{}",
        stdout(&out)
    );
    let text = stdout(&out);
    let pin = text
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("unkeyed_checkpoints_through = { index = 2, mac = \"")
        })
        .unwrap_or_else(|| panic!("no pin printed:\n{text}"));

    // Pinned, the server chains its keyed checkpoints onto the last unkeyed one.
    let text = std::fs::read_to_string(&config).unwrap();
    let pinned = ConfigBuilder::new()
        .merge_toml(&text)
        .merge_toml(&format!("[audit]\n{}\n", pin.trim()))
        .toml();
    std::fs::write(&config, pinned).unwrap();
    let server = TestServer::start(&config).await;
    let pool = pool(&url).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while checkpoints(&pool).await.len() < 3 {
        assert!(Instant::now() < deadline, "no start checkpoint");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, ready) = server.readyz().await;
    assert_eq!(ready["audit_chain"]["ok"], true, "{ready}");
    server.stop().await;
    let stored = checkpoints(&pool).await;
    assert_eq!(stored[2].1, stored[1].2, "{stored:?}");
    let out = cli(&config, &["audit", "verify", "--max-checkpoint-age", "1m"]);
    assert!(out.status.success(), "{}", stdout(&out));
    pool.close().await;
}

/// A trail found tampered with is told to the channels that take `audit.chain_broken`,
/// once, through a real (local) webhook receiver.
#[tokio::test]
async fn a_broken_chain_is_notified_once() {
    use sever_testkit::receiver::Receiver;
    let ws = Workspace::new();
    let url = sqlite_url(&ws);
    let (config, forger) = configs(&ws, &format!("{url:?}"), "1h");
    let server = TestServer::start(&config).await;
    await_audit_chain(&server, true).await;
    server.stop().await;
    // Every checkpoint deleted and an unkeyed one written by someone without the key.
    let pool = pool(&url).await;
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&pool)
        .await
        .unwrap();
    cli_ok(&forger, &["audit", "checkpoint"]);

    let hook = Receiver::start().await;
    let secret = ws.secret_path("hook.secret", "whsec_YnJva2VuLWNoYWluLXRlc3Qtc2VjcmV0LTAx");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = format!(
        "{text}\n[notify]\ntarget_down_after = \"1s\"\npoll_interval = \"100ms\"\n\
         [[notify.channels]]\nname = \"sec\"\nkind = \"webhook\"\nurl = \"{}\"\n\
         allow_http = true\nsecret = {{ file = \"{secret}\" }}\nevents = [\"audit.chain_broken\"]\n",
        hook.url("/hook")
    );
    std::fs::write(&config, text).unwrap();
    let server = TestServer::start(&config).await;
    await_audit_chain(&server, false).await;
    let got = hook.wait_for(1, Duration::from_secs(8)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let body = got[0].json();
    assert_eq!(body["type"], "audit.chain_broken", "{body}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(hook.received().len(), 1, "told once, not every tick");
    server.stop().await;
    pool.close().await;
}
