//! Hostile strings at every door: names no target could hold are refused before anything is
//! queued (API, CLI, forwarded Vault events), a field of the wrong JSON type is a `422` on
//! every JSON route, the bearer scheme is case-insensitive, and request content cannot forge,
//! rewrite or colour lines of the text log.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::config::file;
use crate::support::sever::{
    SECRET, TOKEN, TestServer, Workspace, cli, create_admin, now, pids, sorted, stderr,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;
use sever_testkit::vault::{Rotation, VaultStandIn};

/// Logins no target may hold, whatever its engine: NUL, C0, DEL, C1 (CSI), CR/LF, ESC.
const HOSTILE: [&str; 6] = [
    "app\u{0}x",
    "app\u{1}",
    "app\u{7f}",
    "app\u{9b}2K",
    "app\r\nx",
    "app\u{1b}[2K",
];
/// A login with a 4-byte character: fine on PostgreSQL, not in MySQL's utf8mb3 names.
// U+20000 (CJK Extension B): assigned since Unicode 3.1, so SCRAM's SASLprep accepts it.
const FOUR_BYTE: &str = "app_\u{20000}";

/// A MySQL target that is never reached: every request naming it is refused first.
const MYSQL_TARGET: &str = "[targets.my]\nengine = \"mysql\"\nurl = \"mysql://sever@127.0.0.1:1/x\"\nconnect_timeout = \"1s\"\n";

/// Rows in the store's action queue.
async fn queued_actions(ws: &Workspace) -> i64 {
    let url = format!("sqlite://{}?mode=ro", ws.path("sever.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM actions")
        .fetch_one(&pool)
        .await
        .unwrap()
}

fn assert_refused(what: &str, status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
    let code = body["error"]["code"].as_str().unwrap_or_default();
    assert!(
        ["invalid_request", "unknown_credential"].contains(&code),
        "{what}: {body}"
    );
}

async fn forward(server: &TestServer, event: &Value) -> (StatusCode, Value) {
    let body = serde_json::to_vec(event).unwrap();
    let id = format!("vault_{}", uuid::Uuid::now_v7().simple());
    let r = server
        .post_signed("/v1/events/vault?wait=true", &body, &id, now(), SECRET)
        .await;
    (r.status(), r.json().await.unwrap())
}

fn rotate_event(role: &str) -> Value {
    VaultStandIn::event(
        "database/rotate",
        "database/",
        "database",
        json!({"name": role, "operation": "rotate"}),
        None,
    )
}

#[tokio::test]
async fn hostile_names_are_refused_at_every_door_and_nothing_is_queued() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login(&format!("\"{FOUR_BYTE}\""), "pw").await;
    let vault = VaultStandIn::start().await;
    vault.allow_approle("approle", "sever-role-id", "sever-secret-id");
    let ws = Workspace::new();
    let config = ws
        .target_config(ws.config(), "main", &pg)
        .merge_toml(MYSQL_TARGET)
        .set("vault.address", vault.address())
        .set("vault.auth.method", "approle")
        .set("vault.auth.role_id", "sever-role-id")
        .set(
            "vault.auth.secret_id",
            file(&ws.secret_path("vault.secret-id", "sever-secret-id")),
        )
        .set("credentials.pgrole.vault.mount", "database")
        .set("credentials.pgrole.vault.role", "pgrole")
        .set("credentials.pgrole.vault.target", "main")
        .set("credentials.myrole.vault.mount", "database")
        .set("credentials.myrole.vault.role", "myrole")
        .set("credentials.myrole.vault.target", "my")
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let too_long = "a".repeat(64);

    // POST /v1/revocations: every hostile login, on any target; too long and 4-byte where the
    // engine cannot hold them.
    let mut refused: Vec<(String, Value)> = Vec::new();
    for login in HOSTILE {
        for targets in [json!(["main"]), json!(["my"]), json!("all")] {
            refused.push((
                format!("revocation of {login:?} on {targets}"),
                json!({"login": login, "targets": targets, "reason": "INC-1"}),
            ));
        }
    }
    refused.push((
        "64-byte login on PostgreSQL".into(),
        json!({"login": too_long, "targets": ["main"], "reason": "INC-1"}),
    ));
    for targets in [json!(["my"]), json!("all")] {
        refused.push((
            format!("4-byte login on {targets}"),
            json!({"login": FOUR_BYTE, "targets": targets, "reason": "INC-1"}),
        ));
    }
    for (what, body) in &refused {
        let (status, body) = server.operator_post("/v1/revocations", body).await;
        assert_refused(what, status, &body);
    }

    // GET /v1/sessions: login, database and application_name filters.
    let mut queries: Vec<Vec<(&str, String)>> = Vec::new();
    for field in ["login", "database", "application_name"] {
        for value in HOSTILE {
            queries.push(vec![(field, value.to_owned())]);
            queries.push(vec![(field, value.to_owned()), ("target", "main".into())]);
        }
        queries.push(vec![(field, too_long.clone()), ("target", "main".into())]);
    }
    queries.push(vec![("login", FOUR_BYTE.into()), ("target", "my".into())]);
    queries.push(vec![("login", FOUR_BYTE.into())]);
    queries.push(vec![
        ("database", FOUR_BYTE.into()),
        ("target", "my".into()),
    ]);
    queries.push(vec![
        ("application_name", "café".into()),
        ("target", "main".into()),
    ]);
    for query in &queries {
        let r = server
            .client
            .get(server.operator_url("/v1/sessions"))
            .bearer_auth(TOKEN)
            .query(query)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_refused(&format!("sessions {query:?}"), status, &body);
    }

    // The signed generic event names a credential, never a login; a hostile one is refused.
    for credential in HOSTILE {
        let (status, body) = server
            .event(&json!({"credential": credential, "kind": "revoked"}))
            .await;
        assert_refused(&format!("event for {credential:?}"), status, &body);
    }

    // A forwarded Vault event whose static role holds a hostile username: refused at
    // resolve, as 422, not retried against the database for an hour.
    let rotated = chrono::Utc::now() - chrono::Duration::seconds(5);
    for (role, username) in HOSTILE.iter().map(|u| ("pgrole", (*u).to_owned())).chain([
        ("pgrole", too_long.clone()),
        ("myrole", FOUR_BYTE.to_owned()),
    ]) {
        vault.set_static_role(
            "",
            "database",
            role,
            &username,
            "db",
            rotated,
            Rotation::Period(3600),
        );
        let (status, body) = forward(&server, &rotate_event(role)).await;
        assert_refused(&format!("Vault role {role} as {username:?}"), status, &body);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            !message.chars().any(|c| c.is_control()),
            "the message echoes the name raw: {message:?}"
        );
    }

    // None of it reached the queue or the trail as accepted work.
    assert_eq!(queued_actions(&ws).await, 0);
    assert!(ws.records("event.accepted").await.is_empty());
    assert!(ws.records("action.planned").await.is_empty());
    let rejected = ws.records("request.rejected").await;
    assert!(!rejected.is_empty());

    // A 4-byte login is a valid PostgreSQL role: listed and ended there.
    let (_conn, pid) = pg.session(FOUR_BYTE, "pw", "postgres", "api").await;
    let r = server
        .client
        .get(server.operator_url("/v1/sessions"))
        .bearer_auth(TOKEN)
        .query(&[("login", FOUR_BYTE), ("target", "main")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let listed: Value = r.json().await.unwrap();
    assert_eq!(listed["sessions"][0]["pid"], pid, "{listed}");
    let (status, report) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": FOUR_BYTE, "targets": ["main"], "reason": "INC-2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&[pid]));
    assert!(pg.wait_gone(pid, Duration::from_secs(5)).await);
    server.stop().await;
}

#[test]
fn the_cli_refuses_hostile_names_with_the_usage_exit_code_and_queues_nothing() {
    let ws = Workspace::new();
    let config = ws.write_config(
        &ws.config()
            .set("targets.main.engine", "postgres")
            .set("targets.main.url", "postgres://sever@127.0.0.1:1/postgres")
            .merge_toml(MYSQL_TARGET)
            .toml(),
    );
    let usage = Some(i32::from(sever::cli::EXIT_USAGE));
    // An argument cannot hold NUL; every other hostile name can.
    let mut runs: Vec<Vec<String>> = Vec::new();
    for login in HOSTILE.iter().skip(1) {
        for target in [["--target", "main"], ["--target", "my"]] {
            runs.push(
                [
                    "revoke", "--login", login, target[0], target[1], "--reason", "x",
                ]
                .map(str::to_owned)
                .to_vec(),
            );
        }
        runs.push(
            ["revoke", "--login", login, "--all-targets", "--reason", "x"]
                .map(str::to_owned)
                .to_vec(),
        );
        for flag in ["--login", "--database", "--application-name"] {
            runs.push(["sessions", flag, login].map(str::to_owned).to_vec());
        }
    }
    let too_long = "a".repeat(64);
    runs.push(
        [
            "revoke", "--login", &too_long, "--target", "main", "--reason", "x",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    runs.push(
        [
            "revoke", "--login", FOUR_BYTE, "--target", "my", "--reason", "x",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    runs.push(
        ["sessions", "--login", FOUR_BYTE, "--target", "my"]
            .map(str::to_owned)
            .to_vec(),
    );
    // clap's own refusals use the same code.
    runs.push(
        ["revoke", "--login", "app", "--target", "main"]
            .map(str::to_owned)
            .to_vec(),
    );
    for args in &runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli(&config, &args);
        assert_eq!(out.status.code(), usage, "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains('\u{1b}') && !stderr(&out).contains('\r'),
            "{args:?}: the error echoes the name raw: {:?}",
            stderr(&out)
        );
    }
    // Refused before the store was even opened: nothing queued, nothing recorded.
    assert!(!ws.path("sever.db").exists());
}

/// A config whose one target is never reached (every request here is refused or needs none).
fn plain_config(ws: &Workspace) -> std::path::PathBuf {
    ws.write_config(
        &ws.config()
            .set("targets.main.engine", "postgres")
            .set("targets.main.url", "postgres://sever@127.0.0.1:1/postgres")
            .credential("orders", &[("main", "app")])
            .toml(),
    )
}

#[tokio::test]
async fn a_field_of_the_wrong_json_type_is_an_invalid_request_on_every_json_route() {
    let ws = Workspace::new();
    let server = TestServer::start(&plain_config(&ws)).await;
    let signed_cases: Vec<(&str, Value)> = vec![
        ("/v1/events", json!({"credential": "orders", "kind": 1})),
        (
            "/v1/events",
            json!({"credential": "orders", "kind": ["rotated"]}),
        ),
        (
            "/v1/events",
            json!({"credential": "orders", "kind": {"rotated": 1}}),
        ),
        ("/v1/events", json!({"credential": "orders", "kind": true})),
        ("/v1/events", json!({"credential": 5, "kind": "rotated"})),
        (
            "/v1/events",
            json!({"credential": ["orders"], "kind": "rotated"}),
        ),
        (
            "/v1/events",
            json!({"credential": "orders", "kind": "rotated", "rotated_at": 1}),
        ),
        (
            "/v1/events",
            json!({"credential": "orders", "kind": "rotated", "reason": ["r"]}),
        ),
        (
            "/v1/events?wait=yes",
            json!({"credential": "orders", "kind": "rotated"}),
        ),
        (
            "/v1/events/aws",
            json!({"SecretId": ["s"], "ClientRequestToken": "t", "Step": "finishSecret"}),
        ),
        (
            "/v1/events/aws",
            json!({"SecretId": "s", "ClientRequestToken": "t", "Step": 1}),
        ),
        (
            "/v1/events/vault",
            json!({"data": {"event_type": 1, "event": {"id": "1"}, "plugin_info": {"mount_path": "database/"}}}),
        ),
        ("/v1/events/vault", json!({"data": []})),
    ];
    for (i, (path, body)) in signed_cases.iter().enumerate() {
        let bytes = serde_json::to_vec(body).unwrap();
        let r = server
            .post_signed(path, &bytes, &format!("msg_type_{i}"), now(), SECRET)
            .await;
        let status = r.status();
        let answer: Value = r.json().await.unwrap();
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {answer}"
        );
        assert_eq!(answer["error"]["code"], "invalid_request", "{path} {body}");
    }
    let operator_cases = [
        json!({"login": 5, "targets": "all", "reason": "r"}),
        json!({"login": {"app": 1}, "targets": "all", "reason": "r"}),
        json!({"login": "app", "targets": 5, "reason": "r"}),
        json!({"login": "app", "targets": [1], "reason": "r"}),
        json!({"login": "app", "targets": "all", "reason": 7}),
        json!({"login": "app", "targets": "all", "reason": "r", "dry_run": "yes"}),
        json!({"login": "app", "targets": "all", "reason": "r", "before": 1}),
    ];
    for body in &operator_cases {
        let (status, answer) = server.operator_post("/v1/revocations", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_request", "{body}");
    }
    assert_eq!(queued_actions(&ws).await, 0);
    server.stop().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let ws = Workspace::new();
    let server = TestServer::start(&plain_config(&ws)).await;
    let path = format!("/v1/actions/{}", uuid::Uuid::now_v7());
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = server
            .client
            .get(server.operator_url(&path))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        // Authenticated: the action is simply unknown.
        assert_eq!(status, StatusCode::NOT_FOUND, "{scheme}: {body}");
        assert_eq!(body["error"]["code"], "unknown_action", "{scheme}");
    }
    for header in [
        format!("Basic {TOKEN}"),
        format!("Bearer{TOKEN}"),
        "bearer ".into(),
    ] {
        let r = server
            .client
            .get(server.operator_url(&path))
            .header("authorization", header.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{header}");
    }
    server.stop().await;
}

/// `sever serve` with its text log on a file (not a terminal), at debug level.
struct Serve {
    child: Child,
    log: std::path::PathBuf,
}

impl Serve {
    fn spawn(config: &Path, log: std::path::PathBuf) -> Serve {
        let child = Command::new(env!("CARGO_BIN_EXE_sever"))
            .arg("--config")
            .arg(config)
            .args(["--log-format", "text", "serve", "--listen", "127.0.0.1:0"])
            .env("SEVER_LOG", "debug")
            .env_remove("SEVER_CONFIG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sever serve");
        Serve { child, log }
    }

    fn log(&self) -> Vec<u8> {
        std::fs::read(&self.log).unwrap_or_default()
    }

    /// The listening address from the "sever listening" line.
    async fn address(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = String::from_utf8_lossy(&self.log()).into_owned();
            // Read past any colour codes, so a coloured log fails on its content below.
            if let Some(line) = text.lines().find(|l| l.contains("sever listening"))
                && let Some((_, rest)) = line.split_once("127.0.0.1:")
            {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                return format!("127.0.0.1:{port}");
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sever exited with {status}:\n{text}");
            }
            assert!(Instant::now() < deadline, "not listening:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn request_content_cannot_forge_rewrite_or_colour_the_text_log() {
    let ws = Workspace::new();
    let config = ws.write_config(&ws.base_config());
    let mut serve = Serve::spawn(&config, ws.path("sever.log"));
    let base = format!("http://{}", serve.address().await);
    let client = reqwest::Client::new();
    // Clears the line, returns to its start, and writes what looks like a line of its own.
    let forged = "\u{1b}[2K\r\u{9b}31mFAKE\n2026-01-01T00:00:00.000000Z  INFO sever: FORGED";

    let signed = |path: &'static str, body: Value, id: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let body = serde_json::to_vec(&body).unwrap();
            let ts = now();
            let sig = sever::intake::webhook::sign(SECRET, &id, ts, &body).unwrap();
            client
                .post(format!("{base}{path}"))
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // serde's "unknown field" and "unknown variant" messages quote the request.
    let mut unknown_field = json!({"credential": "orders", "kind": "rotated"});
    unknown_field[forged] = json!(1);
    assert_eq!(
        signed("/v1/events", unknown_field, "msg_forge_1".into()).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        signed(
            "/v1/events",
            json!({"credential": "orders", "kind": forged}),
            "msg_forge_2".into()
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // An ignored Vault event logs its type in the reason.
    let vault = VaultStandIn::event(forged, "database/", "database", json!({}), None);
    assert_eq!(
        signed("/v1/events/vault", vault, "msg_forge_3".into()).await,
        StatusCode::OK
    );
    // The operator API: an unknown field, a hostile login, a hostile filter.
    let revoke = |body: Value| {
        client
            .post(format!("{base}/v1/revocations"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    let mut unknown_field = json!({"login": "app", "targets": "all", "reason": "r"});
    unknown_field[forged] = json!(true);
    assert_eq!(
        revoke(unknown_field).await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Refused as names (checked after the log, which is this test's point).
    let hostile_login = revoke(json!({"login": forged, "targets": "all", "reason": "r"}))
        .await
        .unwrap()
        .status();
    let hostile_filter = client
        .get(format!("{base}/v1/sessions"))
        .bearer_auth(TOKEN)
        .query(&[("application_name", forged)])
        .send()
        .await
        .unwrap()
        .status();

    // Each line is written before its response, so the log is complete now.
    let log = serve.log();
    let text = String::from_utf8_lossy(&log).into_owned();
    assert!(
        !log.contains(&0x1b),
        "an escape sequence reached the log:\n{text}"
    );
    assert!(
        !log.contains(&b'\r'),
        "a carriage return reached the log:\n{text}"
    );
    assert!(
        !text.contains('\u{9b}'),
        "a C1 control reached the log:\n{text}"
    );
    for line in text.lines() {
        assert!(
            !line.starts_with("FAKE") && !line.starts_with("2026-01-01T00:00:00.000000Z"),
            "a forged line:\n{text}"
        );
    }
    // The content was logged, escaped, on the lines of the requests that carried it.
    let logged = text.matches("FORGED").count();
    assert!(logged >= 4, "{logged} escaped copies in:\n{text}");
    assert!(
        text.contains("\\u{1b}[2K\\r\\u{9b}31mFAKE\\n2026"),
        "{text}"
    );
    assert_eq!(hostile_login, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(hostile_filter, StatusCode::UNPROCESSABLE_ENTITY);
}
