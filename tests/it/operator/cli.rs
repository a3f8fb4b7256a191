//! The CLI, run as a real process from the config alone (no service running), against a real
//! PostgreSQL: sessions, revoke, audit verify/list/export, check-config, operator-token.

use std::time::Duration;

use crate::support::config::file;
use crate::support::sever::{ADMIN_PASSWORD, Workspace, cli, create_admin, stderr, stdout};
use serde_json::Value;
use sever_testkit::pg::TestPostgres;
use sha2::Digest;

#[tokio::test]
async fn revoke_sessions_and_audit_from_the_command_line() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("leaked", "pw").await;
    pg.create_login("bystander", "pw").await;
    let ws = Workspace::new();
    let config = ws.write_config(&ws.target_config(ws.config(), "main", &pg).toml());

    let (_c1, a) = pg.session("leaked", "pw", "postgres", "api").await;
    let (_c2, b) = pg.session("leaked", "pw", "postgres", "api").await;
    let (_c3, keep) = pg.session("bystander", "pw", "postgres", "api").await;

    // sessions, as JSON for scripts and as a table for people.
    let out = cli(&config, &["sessions", "--login", "leaked", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mut pids: Vec<i64> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    pids.sort();
    let mut expected = vec![i64::from(a), i64::from(b)];
    expected.sort();
    assert_eq!(pids, expected);
    let out = cli(&config, &["sessions", "--login", "leaked"]);
    assert!(
        stdout(&out).contains(&a.to_string()) && stdout(&out).contains("2 session(s)"),
        "{}",
        stdout(&out)
    );

    // Dry run changes nothing.
    let out = cli(
        &config,
        &[
            "revoke",
            "--login",
            "leaked",
            "--target",
            "main",
            "--reason",
            "INC-9",
            "--dry-run",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("would terminate"), "{}", stdout(&out));
    assert!(pg.is_alive(a).await && pg.is_alive(b).await);

    // The real thing.
    let out = cli(
        &config,
        &[
            "revoke",
            "--login",
            "leaked",
            "--all-targets",
            "--reason",
            "INC-9",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["status"], "completed");
    assert_eq!(
        report["targets"][0]["terminated"].as_array().unwrap().len(),
        2
    );
    for pid in [a, b] {
        assert!(
            pg.wait_gone(pid, Duration::from_secs(5)).await,
            "{pid} survived"
        );
    }
    assert!(pg.is_alive(keep).await);

    // Refusals exit non-zero with a message and touch nothing.
    let out = cli(
        &config,
        &[
            "revoke", "--login", "postgres", "--target", "main", "--reason", "x",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("protected"), "{}", stderr(&out));
    let out = cli(
        &config,
        &["revoke", "--login", "bystander", "--reason", "x"],
    );
    assert!(!out.status.success(), "a target choice is required");
    assert!(pg.is_alive(keep).await);

    // The CLI wrote the same records as the API would, as the person at the keyboard.
    let out = cli(&config, &["audit", "export", "--jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let records: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let terminated: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "session.terminated")
        .collect();
    assert_eq!(terminated.len(), 2);
    assert!(terminated.iter().all(|r| r["actor"] == "cli:responder"));
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "session.would_terminate")
            .count(),
        2
    );
    let out = cli(&config, &["audit", "list", "--kind", "session.terminated"]);
    assert!(
        stdout(&out).contains("session.terminated"),
        "{}",
        stdout(&out)
    );

    // verify passes, then names the record someone edited.
    let out = cli(&config, &["audit", "verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("audit trail OK"));
    let edited = terminated[0]["seq"].as_i64().unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", ws.path("sever.db").display()))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_records SET detail = replace(detail, 'leaked', 'innocent') WHERE seq = $1",
    )
    .bind(edited)
    .execute(&pool)
    .await
    .unwrap();
    let out = cli(&config, &["audit", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(sever::cli::EXIT_AUDIT_BROKEN))
    );
    assert!(
        stdout(&out).contains(&format!("record seq {edited} ")),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("edited"), "{}", stdout(&out));

    // Deleting a record is named too.
    let last: i64 = sqlx::query_scalar("SELECT max(seq) FROM audit_records")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_records WHERE seq = $1")
        .bind(last - 1)
        .execute(&pool)
        .await
        .unwrap();
    let out = cli(&config, &["audit", "verify", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(sever::cli::EXIT_AUDIT_BROKEN))
    );
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["seq"] == last && p["what"].as_str().unwrap().contains("missing")),
        "{report}"
    );
}

#[test]
fn check_config_validates_and_redacts() {
    let ws = Workspace::new();
    // A target URL with a password, from a file: loaded, never printed.
    let url_file = ws.path("pg.url");
    std::fs::write(
        &url_file,
        format!("postgres://sever_admin:{ADMIN_PASSWORD}@127.0.0.1:1/postgres\n"),
    )
    .unwrap();
    let good = ws
        .config()
        .set("targets.main.engine", "postgres")
        .set("targets.main.url", file(&url_file.display().to_string()))
        .credential("orders", &[("main", "app")]);
    let good = ws
        .aws(
            good,
            "http://127.0.0.1:1",
            &["arn:aws:sns:us-east-1:123456789012:t"],
        )
        .toml();
    let config = ws.write_config(&good);
    let out = cli(&config, &["check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(plan["credentials"]["orders"]["logins"][0]["login"], "app");
    assert_eq!(plan["targets"]["main"]["protected_logins"][0], "postgres");
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains(ADMIN_PASSWORD), "a secret was printed");
    assert!(
        !all.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        "the webhook secret was printed"
    );
    assert!(
        !all.contains(crate::support::sever::API_KEY),
        "the EventBridge API key was printed"
    );
    assert!(all.contains("redacted"));
    assert_eq!(
        plan["aws"]["sns"]["topics"][0],
        "arn:aws:sns:us-east-1:123456789012:t"
    );
    assert!(
        plan["aws"]["eventbridge"]["api_keys"][0]
            .as_str()
            .unwrap()
            .starts_with("<redacted, file:")
    );

    // Dangling reference and unknown key: named, non-zero exit.
    let bad = ws.write_config(&ws.config().credential("orders", &[("ghost", "app")]).toml());
    let out = cli(&bad, &["check-config"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("credentials.orders.logins[0].target"),
        "{}",
        stderr(&out)
    );
    let bad = ws.write_config(&ws.config().set("server.listen_addr", "0.0.0.0:1").toml());
    let out = cli(&bad, &["check-config"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("listen_addr"), "{}", stderr(&out));
    // A missing secret file is named by path, and the service would not start.
    std::fs::remove_file(&url_file).unwrap();
    let config = ws.write_config(&good);
    let out = cli(&config, &["check-config"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pg.url"), "{}", stderr(&out));
}

#[test]
fn operator_token_prints_a_token_and_its_hash() {
    let ws = Workspace::new();
    let config = ws.write_config("");
    let out = cli(&config, &["operator-token"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let value = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().last())
            .unwrap()
            .to_owned()
    };
    let token = value("token (");
    let hash = value("token_sha256");
    assert!(token.starts_with("sev_") && token.len() > 60);
    assert_eq!(hash, hex::encode(sha2::Sha256::digest(token.as_bytes())));
}

#[tokio::test]
async fn the_cli_and_a_busy_server_keep_one_audit_chain() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    let ws = Workspace::new();
    let config = ws.write_config(
        &ws.target_config(ws.config(), "main", &pg)
            .set("credentials.noop.policy", "none")
            .credential("noop", &[("main", "app")])
            .toml(),
    );
    let server = crate::support::sever::TestServer::start(&config).await;

    // 20 events through the server and 3 CLI revocations (dry runs), all at once.
    let noop = serde_json::json!({"credential": "noop", "kind": "rotated"});
    let events = (0..20).map(|_| server.event(&noop));
    let drills = (0..3).map(|i| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            cli(
                &config,
                &[
                    "revoke",
                    "--login",
                    "nobody",
                    "--all-targets",
                    "--reason",
                    &format!("drill {i}"),
                    "--dry-run",
                ],
            )
        })
    });
    let (events, drills) = tokio::join!(
        futures_util::future::join_all(events),
        futures_util::future::join_all(drills)
    );
    assert!(
        events
            .iter()
            .all(|(status, _)| *status == reqwest::StatusCode::OK),
        "{events:?}"
    );
    for out in drills {
        let out = out.unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    server.stop().await;

    let out = cli(&config, &["audit", "verify", "--json"]);
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    // Per event: accepted, planned, completed. Per dry run: planned, completed.
    assert_eq!(report["records"], 20 * 3 + 3 * 2, "{report}");
}

/// A server and the CLI write checkpoints to `store_url`; truncating the trail's tail is then
/// named by `audit verify` (exit code 2), and deleting the covering checkpoints as well is
/// named against the checkpoint file.
async fn truncation_of_the_tail_is_detected(ws: &Workspace, store_url: &str) {
    let anchor = ws.path("checkpoints.jsonl");
    let key = ws.secret_path("checkpoint.key", &"k".repeat(40));
    // An hour apart: only the server's start and stop checkpoints are written here.
    let config = ws.write_config(
        &ws.config()
            .set("store.url", store_url)
            .set("audit.checkpoint_interval", "1h")
            .set("audit.checkpoint_key", file(&key))
            .set("audit.checkpoint_file", anchor.display().to_string())
            .toml(),
    );
    let server = crate::support::sever::TestServer::start(&config).await;
    // Each refused event is a record.
    for _ in 0..3 {
        let event = serde_json::json!({"credential": "nope", "kind": "rotated"});
        let (status, _) = server.event(&event).await;
        assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    }
    server.stop().await;
    let out = cli(&config, &["audit", "checkpoint"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("checkpoint 3 (hmac-sha256): records up to seq 3"),
        "{}",
        stdout(&out)
    );

    let verify_all = [
        "audit",
        "verify",
        "--max-checkpoint-age",
        "1h",
        "--checkpoints",
        anchor.to_str().unwrap(),
    ];
    let out = cli(&config, &verify_all);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("audit trail OK: 3 records"));
    assert!(
        stdout(&out).contains("checkpoints: 3 checked, 3 from the checkpoint file; newest 3"),
        "{}",
        stdout(&out)
    );

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(store_url).await.unwrap();
    // Remove the newest record: the rest is still a perfect chain.
    sqlx::query("DELETE FROM audit_records WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let out = cli(&config, &["audit", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(sever::cli::EXIT_AUDIT_BROKEN)),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains(
            "checkpoint 3: record seq 3, which it covers, is missing: the tail of the trail was truncated"
        ),
        "{}",
        stdout(&out)
    );
    assert!(
        !stdout(&out).contains("record seq 3 (id"),
        "the chain itself is intact"
    );

    // Remove the checkpoints that covered it too: the store is consistent again, but the
    // checkpoint file kept elsewhere still names what is gone.
    sqlx::query("DELETE FROM audit_checkpoints WHERE idx > 1")
        .execute(&pool)
        .await
        .unwrap();
    let out = cli(&config, &["audit", "verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let out = cli(&config, &verify_all);
    assert_eq!(
        out.status.code(),
        Some(i32::from(sever::cli::EXIT_AUDIT_BROKEN)),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains(
            "checkpoint 3: it is in the checkpoint file (line 3) but not in the store: \
             the store was rolled back or its checkpoints deleted"
        ),
        "{}",
        stdout(&out)
    );
    let out = cli(
        &config,
        &[
            "audit",
            "verify",
            "--json",
            "--checkpoints",
            anchor.to_str().unwrap(),
        ],
    );
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["checkpoints"]["newest"]["index"], 1);
    assert!(
        report["checkpoints"]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["index"] == 3 && p["what"].as_str().unwrap().contains("record seq 3")),
        "{report}"
    );
    pool.close().await;
}

#[tokio::test]
async fn audit_verify_detects_a_truncated_tail_in_sqlite() {
    let ws = Workspace::new();
    let url = format!("sqlite://{}?mode=rwc", ws.path("sever.db").display());
    truncation_of_the_tail_is_detected(&ws, &url).await;
}

#[tokio::test]
async fn audit_verify_detects_a_truncated_tail_in_postgres() {
    let pg = TestPostgres::start();
    pg.exec("CREATE DATABASE sever_store").await;
    let ws = Workspace::new();
    truncation_of_the_tail_is_detected(&ws, &pg.superuser_url("sever_store")).await;
}

#[tokio::test]
async fn a_selector_revocation_previews_until_told_to_execute() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let config = ws.write_config(&ws.target_config(ws.config(), "main", &pg).toml());
    let (_c1, api) = pg.session("app", "pw", "postgres", "orders-api").await;
    let (_c2, dump) = pg.session("app", "pw", "postgres", "pg_dump").await;
    let revoke = |extra: &[&str]| {
        let mut args = vec![
            "revoke",
            "--login",
            "app",
            "--exclude-application-names",
            "pg_*",
            "--target",
            "main",
            "--reason",
            "INC-18",
        ];
        args.extend_from_slice(extra);
        cli(&config, &args)
    };

    // Any selector field beyond the login: a dry run unless --execute.
    let out = revoke(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("DRY RUN: nothing was ended"), "{text}");
    assert!(
        text.contains("would terminate") && text.contains(&api.to_string()),
        "{text}"
    );
    assert!(
        text.contains("excluded (exclude_application_names: pg_*)"),
        "{text}"
    );
    assert!(pg.is_alive(api).await && pg.is_alive(dump).await);
    assert_eq!(ws.records("session.terminated").await.len(), 0);

    // --all-logins without the count its dry run printed is refused before connecting.
    let out = cli(
        &config,
        &[
            "revoke",
            "--all-logins",
            "--databases",
            "postgres",
            "--target",
            "main",
            "--reason",
            "r",
            "--execute",
        ],
    );
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("expect_count"), "{}", stderr(&out));

    let out = revoke(&["--execute", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["dry_run"], false);
    assert!(pg.wait_gone(api, Duration::from_secs(5)).await);
    assert!(pg.is_alive(dump).await, "pg_dump is spared");
}

#[tokio::test]
async fn lock_locks_and_unlock_from_the_command_line() {
    use sqlx::Connection;
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.exec("ALTER ROLE sever_admin CREATEROLE").await;
    pg.create_login("app", "pw").await;
    let ws = Workspace::new();
    let config = ws.write_config(
        &ws.target_config(ws.config(), "main", &pg)
            .set("targets.main.locks", true)
            .toml(),
    );
    let can_log_in = || async {
        sqlx::PgConnection::connect(&pg.url("app", "pw", "postgres"))
            .await
            .is_ok()
    };
    let (_c, pid) = pg.session("app", "pw", "postgres", "api").await;

    // No duration and no --permanent: refused before anything is connected.
    let out = cli(
        &config,
        &[
            "lock", "--login", "app", "--target", "main", "--reason", "r",
        ],
    );
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("--for"), "{}", stderr(&out));

    let out = cli(
        &config,
        &[
            "lock", "--login", "app", "--target", "main", "--for", "10m", "--reason", "INC-19",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = report["action_id"].as_str().unwrap().to_owned();
    assert!(pg.wait_gone(pid, Duration::from_secs(5)).await);
    assert!(!can_log_in().await);

    let out = cli(&config, &["locks"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&id) && stdout(&out).contains("1 lock(s)"),
        "{}",
        stdout(&out)
    );

    let out = cli(&config, &["unlock", &id, "--reason", "contained"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("restored"), "{}", stdout(&out));
    assert!(can_log_in().await);
    let out = cli(&config, &["unlock", &id, "--reason", "again"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}

#[tokio::test]
async fn check_config_asks_each_locking_target_for_the_lock_grant() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    let ws = Workspace::new();
    let config = ws.write_config(
        &ws.target_config(ws.config(), "main", &pg)
            .set("targets.main.locks", true)
            .toml(),
    );
    let out = cli(&config, &["check-config"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("CREATEROLE"), "{}", stderr(&out));
    pg.exec("ALTER ROLE sever_admin CREATEROLE").await;
    let out = cli(&config, &["check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(plan["lock_grants"]["main"], "ok", "{plan}");
    assert!(
        !ws.path("sever.db").exists(),
        "check-config creates no store"
    );
}
