//! The log check (issue 6): sever runs every path we can drive with distinctive, known secret
//! values wherever a secret goes, with every crate (sever, sqlx, hyper, reqwest, vaultrs,
//! the AWS SDK, tiberius, tungstenite, rustls…) logging at TRACE into memory. Then no log
//! line, HTTP response body, CLI output or audit record may contain any of those values, raw
//! or in a common encoding (percent-encoded, base64, hex, byte list).
//!
//! Whose lines are checked: the server runs in-process on a runtime of its own, while the
//! harness (setup SQL such as `CREATE ROLE … PASSWORD`, the moto client, the Vault and TDS
//! stand-ins) runs on threads marked as the harness. The harness holds the secrets by design,
//! so its lines are left out; every other line is checked. CLI runs are subprocesses with
//! `SEVER_LOG=trace`: all their output is checked.
//!
//! Outbound notifications are on too: a Slack channel (whose URL path is the credential), a
//! PagerDuty channel (its routing key) and a signed webhook (its outbound `whsec_`), against
//! a local receiver that fails their first attempts, and a Slack channel whose endpoint
//! refuses connections, so the delivery error paths log too.
//!
//! One value is an identifier rather than a secret: the AWS access key id, which the AWS SDK
//! itself prints in its DEBUG/TRACE dumps of the credentials (with the secret key redacted),
//! as AWS intends. It is checked everywhere but in the SDK's own lines (`aws_*` targets).

/// The parts of `tests/it/support` this binary uses; it uses only some of their helpers.
#[path = "it/support"]
#[allow(dead_code)]
mod support {
    pub mod config;
    pub mod scenarios;
    pub mod sever;
}

use std::cell::Cell;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::support::config::{ConfigBuilder, file};
use crate::support::scenarios::{Database, tds_session};
use crate::support::sever::{Workspace, now, pids, sorted, sorted_ids};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::mariadb::TestMariaDb;
use sever_testkit::moto::TestMoto;
use sever_testkit::pg::TestPostgres;
use sever_testkit::receiver::{Answer, Receiver};
use sever_testkit::tds::TdsStandIn;
use sever_testkit::util::encode_bytes;
use sever_testkit::vault::{Rotation, VaultStandIn};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

// ----- the known secrets -----
//
// Distinctive, and most hold characters that URL encoding changes (`@`, `/`, `+`, space), so
// an encoded leak looks different from a raw one and both are searched for.

/// Key bytes of the two webhook signing secrets (32 bytes each; two, as in a key rotation).
const WEBHOOK_KEYS: [&[u8; 32]; 2] = [
    b"logcheck webhook key one (32 B)!",
    b"logcheck webhook key two (32 B)!",
];
/// A signing key sever does not trust (a sender's wrong key; sever only sees its signature).
const FOREIGN_WEBHOOK_KEY: &[u8; 32] = b"logcheck foreign key, untrusted!";
const OPERATOR_TOKEN: &str = "sev_logcheck_operator_token_7c1e9a4b2d";
/// A token someone presents that is not configured; it must not be echoed either.
const WRONG_OPERATOR_TOKEN: &str = "sev_logcheck_presented_wrong_token_5f3a";
const API_KEY: &str = "ebLogcheck/ApiKey+Q9 w=Z";
const WRONG_API_KEY: &str = "ebLogcheck/WrongKey+2b7d";
const AWS_ACCESS_KEY_ID: &str = "AKIALOGCHECK7X2Q9ZPA";
const AWS_SECRET_ACCESS_KEY: &str = "LogcheckSecretAccess/Key+9f2Xq7Zr4Tw8Yb1Nc";
const PG_ADMIN_PASSWORD: &str = "pgAdm1n@Lc/7Qz+k w9";
const MARIA_ADMIN_PASSWORD: &str = "mAr1a@Lc/8Rt+x v3";
const TDS_ADMIN_PASSWORD: &str = "tDs@Lc/9Yu+p!m4";
const STORE_PASSWORD: &str = "st0re@Lc/3Wq+z h8";
/// Wrong admin passwords, one per engine: the connection-error paths.
const PG_WRONG_PASSWORD: &str = "pgWr0ng@Lc/5Ee+r t2";
const MARIA_WRONG_PASSWORD: &str = "mAWr0ng@Lc/6Ff+s u1";
const TDS_WRONG_PASSWORD: &str = "tDsWr0ng@Lc/4Gg+v!x";
const STORE_WRONG_PASSWORD: &str = "st0reWr0ng@Lc/2Hh+y j5";
/// The `password` fields of the secret versions in moto (the app login's real passwords).
const AWS_APP_PASSWORD_OLD: &str = "awsOld@Lc/1Pw+q d6";
const AWS_APP_PASSWORD_NEW: &str = "awsNew@Lc/2Pw+r e7";
/// A secret whose value is not JSON at all: sever must refuse it without quoting it.
const AWS_PLAIN_SECRET: &str = "plainSecretValue@Lc/0Pw+s f8";
const VAULT_SECRET_ID: &str = "vaultSecretId-Lc-6d2f9e/+k";
const VAULT_TOKEN: &str = "hvs.LogcheckStaticToken7a8b9c0d";
/// The secret part of the Slack incoming-webhook URLs (the whole URL is the credential; the
/// receiver's host and port are not secret).
const SLACK_PATH: &str = "/services/TLOGCHECK/BLOGCHECK/SlackWebhookLc+8Qv/Zp3";
/// The same for the Slack channel whose endpoint refuses connections.
const SLACK_DOWN_PATH: &str = "/services/TLOGDOWN/BLOGDOWN/SlackDownLc+5Wm/Kt9";
const PAGERDUTY_ROUTING_KEY: &str = "PdRoutingKeyLc/7Rk+2 Tm4";
/// Key bytes of the outbound webhook signing secret (32 bytes).
const OUTBOUND_WEBHOOK_KEY: &[u8; 32] = b"logcheck outbound key (32 B)!!!!";

const ROLE_ID: &str = "sever-logcheck-role-id";
const GONE: Duration = Duration::from_secs(5);
const ARN_ACCOUNT: &str = "123456789012";

fn whsec(key: &[u8]) -> String {
    format!("whsec_{}", STANDARD.encode(key))
}

/// Every known secret, by name.
fn known_secrets() -> Vec<(String, Vec<u8>)> {
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, key) in WEBHOOK_KEYS.iter().enumerate() {
        secrets.push((format!("webhook secret {i}"), whsec(*key).into_bytes()));
        secrets.push((
            format!("webhook secret {i}, base64 part"),
            STANDARD.encode(key).into_bytes(),
        ));
        secrets.push((format!("webhook key {i} bytes"), key.to_vec()));
    }
    secrets.push((
        "outbound webhook secret".into(),
        whsec(OUTBOUND_WEBHOOK_KEY).into_bytes(),
    ));
    secrets.push((
        "outbound webhook secret, base64 part".into(),
        STANDARD.encode(OUTBOUND_WEBHOOK_KEY).into_bytes(),
    ));
    secrets.push((
        "outbound webhook key bytes".into(),
        OUTBOUND_WEBHOOK_KEY.to_vec(),
    ));
    for (name, value) in [
        ("operator token", OPERATOR_TOKEN),
        ("wrong operator token", WRONG_OPERATOR_TOKEN),
        ("EventBridge API key", API_KEY),
        ("wrong EventBridge API key", WRONG_API_KEY),
        ("AWS access key id", AWS_ACCESS_KEY_ID),
        ("AWS secret access key", AWS_SECRET_ACCESS_KEY),
        ("PostgreSQL admin password", PG_ADMIN_PASSWORD),
        ("MariaDB admin password", MARIA_ADMIN_PASSWORD),
        ("SQL Server admin password", TDS_ADMIN_PASSWORD),
        ("store password", STORE_PASSWORD),
        ("wrong PostgreSQL password", PG_WRONG_PASSWORD),
        ("wrong MariaDB password", MARIA_WRONG_PASSWORD),
        ("wrong SQL Server password", TDS_WRONG_PASSWORD),
        ("wrong store password", STORE_WRONG_PASSWORD),
        ("AWS secret password (old)", AWS_APP_PASSWORD_OLD),
        ("AWS secret password (new)", AWS_APP_PASSWORD_NEW),
        ("AWS plain secret", AWS_PLAIN_SECRET),
        ("Vault AppRole secret_id", VAULT_SECRET_ID),
        ("Vault token", VAULT_TOKEN),
        ("Slack webhook URL path", SLACK_PATH),
        (
            "Slack webhook URL path (refusing endpoint)",
            SLACK_DOWN_PATH,
        ),
        ("PagerDuty routing key", PAGERDUTY_ROUTING_KEY),
    ] {
        secrets.push((name.into(), value.as_bytes().to_vec()));
    }
    secrets
}

/// The base64 text `secret` produces wherever it sits inside a longer encoded value (e.g.
/// `Basic base64(user:password)`): for each of the three byte alignments, the characters
/// that depend on the secret's bytes alone.
fn embedded_base64(secret: &[u8], engine: &impl base64::Engine) -> Vec<String> {
    (0..3)
        .map(|k| {
            let mut padded = vec![0u8; k];
            padded.extend_from_slice(secret);
            let text = engine.encode(&padded);
            let start = (8 * k).div_ceil(6);
            let end = 8 * (k + secret.len()) / 6;
            text[start..end].to_owned()
        })
        .collect()
}

/// The forms in which a secret would show up if it leaked: raw, percent- and
/// form-encoded, base64 (standard and URL-safe, at any alignment), hex, and as a byte list.
fn needles(secret: &[u8]) -> Vec<(&'static str, String)> {
    let mut forms = vec![
        ("raw", String::from_utf8_lossy(secret).into_owned()),
        ("percent-encoded", encode_bytes(secret)),
        (
            "form-encoded",
            url::form_urlencoded::byte_serialize(secret).collect(),
        ),
        ("hex", hex::encode(secret)),
        ("HEX", hex::encode_upper(secret)),
        (
            "byte list",
            format!("{:?}", secret.iter().take(12).copied().collect::<Vec<u8>>())
                .trim_end_matches(']')
                .to_owned(),
        ),
    ];
    forms.extend(
        embedded_base64(secret, &STANDARD_NO_PAD)
            .into_iter()
            .map(|s| ("base64", s)),
    );
    forms.extend(
        embedded_base64(secret, &URL_SAFE_NO_PAD)
            .into_iter()
            .map(|s| ("base64url", s)),
    );
    // One entry per distinct text (an all-alphanumeric secret encodes to itself).
    let mut seen = std::collections::HashSet::new();
    forms.retain(|(_, text)| seen.insert(text.clone()));
    forms
}

// ----- capturing every log line in memory -----

thread_local! {
    /// Set on the harness's threads: their lines are the test's, not sever's.
    static HARNESS: Cell<bool> = const { Cell::new(false) };
}

/// One formatted log line, its target, and whether the harness emitted it.
struct Line {
    harness: bool,
    target: String,
    text: String,
}

static LOG: Mutex<Vec<Line>> = Mutex::new(Vec::new());

fn log_lines() -> std::sync::MutexGuard<'static, Vec<Line>> {
    LOG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands the fmt layer one buffer per event; the finished line is stored on drop.
struct Capture;

struct LineWriter {
    harness: bool,
    target: String,
    buf: Vec<u8>,
}

impl std::io::Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let text = String::from_utf8_lossy(&self.buf).into_owned();
            log_lines().push(Line {
                harness: self.harness,
                target: std::mem::take(&mut self.target),
                text,
            });
        }
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            harness: HARNESS.with(Cell::get),
            target: String::new(),
            buf: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        let mut writer = self.make_writer();
        writer.target = meta.target().to_owned();
        writer
    }
}

/// TRACE for every crate, including span fields (at creation and close) and `log` records,
/// through sever's own filter as the binary builds it: that caps the dependency targets known
/// to print secrets at TRACE, even when asked for them by name as here.
fn install_capture() {
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(Capture)
        .with_ansi(false)
        .with_thread_names(true)
        .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE);
    let filter = sever::cli::cap_secret_bearing_targets(tracing_subscriber::EnvFilter::new(
        "trace,tungstenite::handshake::client=trace",
    ));
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init()
        .expect("the only global subscriber of this test binary");
}

// ----- what the check reads besides logs -----

/// Every response body and CLI output, labelled.
static TEXTS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn keep(label: impl Into<String>, text: impl Into<String>) {
    TEXTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((label.into(), text.into()));
}

// ----- the real server, on its own runtime -----

struct Server {
    addr: std::net::SocketAddr,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), sever::ServeError>>,
}

impl Server {
    /// Loads `config` and serves on the server runtime (so everything it logs is sever's).
    async fn start(runtime: &Handle, config: &Path) -> Server {
        let path = config.to_owned();
        let (addr_tx, addr_rx) = oneshot::channel();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = runtime.spawn(async move {
            let config = sever::config::Config::load(&path).expect("test config is valid");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let shutdown = async {
                let _ = rx.await;
            };
            sever::run_with(config, listener, shutdown, sever::RunOptions::default()).await
        });
        let server = Server {
            addr: addr_rx.await.unwrap(),
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            handle,
        };
        for _ in 0..200 {
            if let Ok(r) = server.client.get(server.url("/healthz")).send().await
                && r.status() == StatusCode::OK
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("sever did not become healthy");
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.unwrap().unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `request`, keeps the body for the check, and parses it as JSON.
    async fn send(&self, label: &str, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = request.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        keep(format!("HTTP {label}"), text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A Standard Webhooks delivery signed with `key` under `id`.
    async fn signed(&self, path: &str, body: &Value, id: &str, key: &[u8]) -> (StatusCode, Value) {
        let body = serde_json::to_vec(body).unwrap();
        let ts = now();
        let signature = sever::intake::webhook::sign(&whsec(key), id, ts, &body).unwrap();
        let request = self
            .client
            .post(self.url(path))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body);
        self.send(path, request).await
    }

    /// A signed delivery with a fresh id.
    async fn event(&self, path: &str, body: &Value, key: &[u8]) -> (StatusCode, Value) {
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        self.signed(path, body, &id, key).await
    }

    async fn operator(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = match body {
            Some(body) => self.client.post(self.url(path)).json(body),
            None => self.client.get(self.url(path)),
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(path, request).await
    }

    async fn eventbridge(&self, event: &Value, key: &str) -> (StatusCode, Value) {
        let request = self
            .client
            .post(self.url("/v1/events/aws?wait=true"))
            .header("x-sever-api-key", key)
            .json(event);
        self.send("eventbridge", request).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(path, self.client.get(self.url(path))).await
    }
}

// ----- the CLI, as a subprocess -----

/// Runs the real binary with every crate at TRACE; keeps stdout and stderr for the check.
fn cli(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sever"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("SEVER_LOG", "trace")
        .env("RUST_LOG", "trace")
        // Plain text: colour codes would sit between a field's name and its value.
        .env("NO_COLOR", "1")
        .env("USER", "responder")
        .env_remove("SUDO_USER")
        .output()
        .expect("run sever");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let file = config.file_name().unwrap_or_default().to_string_lossy();
    let label = format!("CLI [{file}] {}", args.join(" "));
    keep(format!("{label} (stdout)"), stdout.clone());
    keep(format!("{label} (stderr)"), stderr.clone());
    (out.status.code(), stdout, stderr)
}

// ----- the databases and stand-ins -----

struct Env {
    pg: TestPostgres,
    maria: TestMariaDb,
    tds: TdsStandIn,
    moto: TestMoto,
    vault: VaultStandIn,
    /// Where the notification channels deliver.
    receiver: Receiver,
    ws: Workspace,
}

impl Env {
    async fn start() -> Env {
        // The slow starts overlap.
        let pg = tokio::task::spawn_blocking(TestPostgres::start);
        let maria = tokio::task::spawn_blocking(TestMariaDb::start);
        let moto = tokio::task::spawn_blocking(TestMoto::start);
        let tds = TdsStandIn::start().await;
        let vault = VaultStandIn::start().await;
        let (pg, maria, moto) = (pg.await.unwrap(), maria.await.unwrap(), moto.await.unwrap());

        pg.exec(&format!(
            "CREATE ROLE sever_admin LOGIN PASSWORD '{PG_ADMIN_PASSWORD}' \
             IN ROLE pg_signal_backend, pg_read_all_stats"
        ))
        .await;
        pg.exec(&format!(
            "CREATE ROLE sever_store LOGIN PASSWORD '{STORE_PASSWORD}'"
        ))
        .await;
        pg.exec("CREATE DATABASE sever_store OWNER sever_store")
            .await;
        for login in ["app", "vault_app", "watch_app"] {
            pg.create_login(login, "pw0").await;
        }
        pg.create_login("aws_app", AWS_APP_PASSWORD_OLD).await;

        maria
            .exec(&format!(
                "CREATE USER 'sever_admin'@'%' IDENTIFIED BY '{MARIA_ADMIN_PASSWORD}'; \
                 GRANT PROCESS, CONNECTION ADMIN ON *.* TO 'sever_admin'@'%'; \
                 GRANT SELECT ON mysql.global_priv TO 'sever_admin'@'%'; \
                 GRANT SELECT ON mysql.roles_mapping TO 'sever_admin'@'%';"
            ))
            .await;
        maria.create_account("app", "%", "pw0").await;

        tds.allow_login("sever_admin", TDS_ADMIN_PASSWORD);
        tds.allow_login("app", "pw0");

        vault.allow_approle("approle", ROLE_ID, VAULT_SECRET_ID);
        vault.allow_token(VAULT_TOKEN);

        let receiver = Receiver::start().await;
        // The first attempts fail (a server error, a rate limit), so errors are logged too.
        receiver.script([
            Answer::new(500, "internal error"),
            Answer::new(429, "rate_limited").header("Retry-After", "1"),
        ]);

        Env {
            pg,
            maria,
            tds,
            moto,
            vault,
            receiver,
            ws: Workspace::new(),
        }
    }

    fn store_url(&self, password: &str) -> String {
        self.pg.url("sever_store", password, "sever_store")
    }

    fn ado(&self, password: &str) -> String {
        format!(
            "Server=tcp:127.0.0.1,{};User Id=sever_admin;Password={password};Encrypt=DANGER_PLAINTEXT",
            self.tds.port()
        )
    }

    /// The config's common head: store (PostgreSQL, password in a file), two signing
    /// secrets, one operator, timeouts (a short retry window, so the wrong-password targets
    /// are given up on within the request).
    fn head(&self, name: &str, store_password: &str) -> ConfigBuilder {
        let ws = &self.ws;
        let store = ws.secret_path(
            &format!("{name}.store.url"),
            &self.store_url(store_password),
        );
        let s0 = ws.secret_path("webhook0.secret", &whsec(WEBHOOK_KEYS[0]));
        let s1 = ws.secret_path("webhook1.secret", &whsec(WEBHOOK_KEYS[1]));
        ConfigBuilder::new()
            .set("protected_logins", vec!["postgres"])
            .set("store.url", file(&store))
            .set("webhooks.secrets", vec![file(&s0), file(&s1)])
            .set("termination.timeout", "5s")
            .set("termination.verify_timeout", "3s")
            .set("queue.retry_for", "2s")
            .operator("alice", &sever::operator::token_hash(OPERATOR_TOKEN))
    }

    fn target(&self, config: ConfigBuilder, id: &str, engine: &str, url: &str) -> ConfigBuilder {
        let url_file = self.ws.secret_path(&format!("{id}.url"), url);
        config.target(id, engine, &url_file)
    }

    /// Server A: every engine, a wrong-password twin of each, AWS, and Vault by AppRole
    /// with the event subscriber.
    fn config_a(&self, name: &str, store_password: &str) -> PathBuf {
        let ws = &self.ws;
        let mut config = self.head(name, store_password);
        for (id, engine, url) in [
            (
                "pg",
                "postgres",
                self.pg.url("sever_admin", PG_ADMIN_PASSWORD, "postgres"),
            ),
            (
                "maria",
                "mysql",
                self.maria.url("sever_admin", MARIA_ADMIN_PASSWORD),
            ),
            ("mssql", "sqlserver", self.ado(TDS_ADMIN_PASSWORD)),
            (
                "pg_wrong",
                "postgres",
                self.pg.url("sever_admin", PG_WRONG_PASSWORD, "postgres"),
            ),
            (
                "maria_wrong",
                "mysql",
                self.maria.url("sever_admin", MARIA_WRONG_PASSWORD),
            ),
            ("mssql_wrong", "sqlserver", self.ado(TDS_WRONG_PASSWORD)),
        ] {
            config = self.target(config, id, engine, &url);
        }
        let text = config
            .set("aws.region", "us-east-1")
            .set("aws.endpoint_url", self.moto.endpoint())
            .set(
                "aws.static_credentials.access_key_id",
                file(&ws.secret_path("aws.key", AWS_ACCESS_KEY_ID)),
            )
            .set(
                "aws.static_credentials.secret_access_key",
                file(&ws.secret_path("aws.secret", AWS_SECRET_ACCESS_KEY)),
            )
            .set(
                "aws.eventbridge.api_keys",
                vec![file(&ws.secret_path("eventbridge.key", API_KEY))],
            )
            .set("vault.address", self.vault.address())
            .set("vault.auth.method", "approle")
            .set("vault.auth.role_id", ROLE_ID)
            .set(
                "vault.auth.secret_id",
                file(&ws.secret_path("vault.secret-id", VAULT_SECRET_ID)),
            )
            .set("vault.subscriber.enabled", true)
            .set("vault.subscriber.event_types", vec!["database/*"])
            .credential(
                "orders",
                &[("pg", "app"), ("maria", "app"), ("mssql", "app")],
            )
            .credential(
                "broken",
                &[
                    ("pg_wrong", "app"),
                    ("maria_wrong", "app"),
                    ("mssql_wrong", "app"),
                ],
            )
            .set("credentials.aws_orders.aws.secret", "prod/orders")
            .set("credentials.aws_orders.aws.target", "pg")
            .set("credentials.aws_plain.aws.secret", "prod/plain")
            .set("credentials.aws_plain.aws.target", "pg")
            .set("credentials.vault_orders.vault.mount", "database")
            .set("credentials.vault_orders.vault.role", "orders")
            .set("credentials.vault_orders.vault.target", "pg")
            .merge(&self.channels())
            .toml();
        let path = ws.path(&format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `[notify]`: Slack, PagerDuty and a webhook to the receiver, and a Slack channel whose
    /// endpoint refuses connections; quick polling and retries.
    fn channels(&self) -> ConfigBuilder {
        let ws = &self.ws;
        let slack = ws.secret_path("slack.url", &self.receiver.url(SLACK_PATH));
        let closed = sever_testkit::util::free_port();
        let slack_down = ws.secret_path(
            "slack-down.url",
            &format!("http://127.0.0.1:{closed}{SLACK_DOWN_PATH}"),
        );
        let routing_key = ws.secret_path("pagerduty.key", PAGERDUTY_ROUTING_KEY);
        let outbound = ws.secret_path("outbound.secret", &whsec(OUTBOUND_WEBHOOK_KEY));
        let events =
            r#"["action.started", "action.completed", "action.incomplete", "action.given_up"]"#;
        ConfigBuilder::new().merge_toml(&format!(
            r#"
            [notify]
            poll_interval = "100ms"
            retry_min = "100ms"
            retry_max = "500ms"
            timeout = "2s"
            [[notify.channels]]
            name = "slack"
            kind = "slack"
            url = {{ file = "{slack}" }}
            allow_http = true
            events = {events}
            [[notify.channels]]
            name = "slack-down"
            kind = "slack"
            url = {{ file = "{slack_down}" }}
            allow_http = true
            events = {events}
            [[notify.channels]]
            name = "pager"
            kind = "pagerduty"
            url = "{pd}"
            routing_key = {{ file = "{routing_key}" }}
            allow_http = true
            events = {events}
            [[notify.channels]]
            name = "siem"
            kind = "webhook"
            url = "{siem}"
            secret = {{ file = "{outbound}" }}
            allow_http = true
            events = {events}
            "#,
            pd = self.receiver.url("/pd"),
            siem = self.receiver.url("/siem"),
        ))
    }

    /// Server B: Vault by static token, with the static-role watcher; the same store.
    fn config_b(&self) -> PathBuf {
        let config = self.target(
            self.head("b", STORE_PASSWORD),
            "pg",
            "postgres",
            &self.pg.url("sever_admin", PG_ADMIN_PASSWORD, "postgres"),
        );
        let text = self
            .ws
            .vault_token(config, &self.vault.address(), VAULT_TOKEN)
            .set("vault.watcher.interval", "200ms")
            .set("credentials.watched.vault.mount", "database")
            .set("credentials.watched.vault.role", "watched")
            .set("credentials.watched.vault.target", "pg")
            .toml();
        let path = self.ws.path("b.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Changes a PostgreSQL login's password; returns the database's clock at that moment.
    async fn rotate_pg(&self, login: &str, password: &str) -> DateTime<Utc> {
        let (mut admin, _) = self.pg.session("postgres", "", "postgres", "").await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER ROLE {login} PASSWORD '{password}'"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut admin)
            .await
            .unwrap()
    }

    async fn assert_pg_gone(&self, pids: &[i32], what: &str) {
        for pid in pids {
            assert!(
                self.pg.wait_gone(*pid, GONE).await,
                "{what}: session {pid} survived"
            );
        }
    }
}

fn rds_secret(pg: &TestPostgres, username: &str, password: &str) -> Value {
    json!({"engine": "postgres", "host": "127.0.0.1", "port": pg.port(), "username": username,
           "password": password, "dbname": "postgres"})
}

fn label_updated(arn: &str, version: &str) -> Value {
    json!({
        "version": "0", "id": format!("evt-{version}"), "detail-type": "Secret Label Updated",
        "source": "aws.secretsmanager", "account": ARN_ACCOUNT, "time": Utc::now().to_rfc3339(),
        "region": "us-east-1", "resources": [arn],
        "detail": {"labelUpdated": "AWSCURRENT", "versionId": version},
    })
}

fn vault_rotate_event(role: &str) -> Value {
    VaultStandIn::event(
        "database/rotate",
        "database/",
        "database",
        json!({"name": role, "operation": "rotate", "modified": "true",
               "path": format!("database/rotate-role/{role}")}),
        None,
    )
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

// ----- the flows -----

/// Server A: every engine, every intake, the rejections, a store outage.
async fn drive_server_a(env: &Env, runtime: &Handle) {
    let config = env.config_a("a", STORE_PASSWORD);
    let server = Server::start(runtime, &config).await;

    // A rotation event ends the older sessions on every engine.
    let pg_old = env.pg.open_sessions("app", "pw0", 2).await;
    let maria_old = env.maria.open_sessions("app", "pw0", 2).await;
    let mut tds_old = Vec::new();
    for _ in 0..2 {
        tds_old.push(tds_session(&env.tds, "app", "pw0").await);
    }
    let rotation = json!({"credential": "orders", "kind": "rotated", "reason": "logcheck"});
    let id = "msg_logcheck_rotation";
    let (status, report) = server
        .signed("/v1/events?wait=true", &rotation, id, WEBHOOK_KEYS[0])
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(pids(&report, "pg", "terminated"), sorted(&pg_old));
    let maria_ids: Vec<i64> = maria_old.iter().map(|id| *id as i64).collect();
    assert_eq!(
        pids(&report, "maria", "terminated"),
        sorted_ids(&maria_ids),
        "{report}"
    );
    assert_eq!(
        pids(&report, "mssql", "terminated"),
        sorted_ids(&tds_old),
        "{report}"
    );
    env.assert_pg_gone(&pg_old, "rotation").await;
    for id in &maria_old {
        assert!(
            env.maria.wait_gone(*id, GONE).await,
            "MariaDB session {id} survived"
        );
    }
    for id in &tds_old {
        assert!(
            Database::wait_gone(&env.tds, *id).await,
            "TDS session {id} survived"
        );
    }

    // The notifications of what happened so far reach every working channel, after the
    // scripted failures (retried).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = env.receiver.received();
        let paths = [SLACK_PATH, "/pd/v2/change/enqueue", "/siem"];
        if got.len() >= 5 && paths.iter().all(|p| got.iter().any(|r| r.path == *p)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "notifications not delivered: {:?}",
            got.iter().map(|r| &r.path).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The second signing secret (a key rotation) verifies too; every wrong-password target
    // fails to connect and is reported.
    let (status, report) = server
        .event(
            "/v1/events?wait=true",
            &json!({"credential": "broken", "kind": "revoked", "reason": "logcheck"}),
            WEBHOOK_KEYS[1],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "incomplete", "{report}");
    for target in report["targets"].as_array().unwrap() {
        assert!(target["error"].is_string(), "no connection error: {report}");
    }

    // Rejections: a foreign key's signature, a replay, no headers at all.
    let (status, body) = server
        .event("/v1/events?wait=true", &rotation, FOREIGN_WEBHOOK_KEY)
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "invalid_signature")
    );
    let (status, body) = server
        .signed("/v1/events?wait=true", &rotation, id, WEBHOOK_KEYS[0])
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "replayed_delivery")
    );
    let (status, body) = server
        .send(
            "unsigned",
            server.client.post(server.url("/v1/events")).json(&rotation),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "missing_header")
    );

    // Operators: a wrong token, no token, a dry run, a revocation, the session listing.
    let revoke = |dry_run: bool| json!({"login": "app", "targets": ["pg", "pg_wrong"], "reason": "INC-LOGCHECK", "dry_run": dry_run});
    let (status, body) = server
        .operator(
            "/v1/revocations",
            Some(WRONG_OPERATOR_TOKEN),
            Some(&revoke(false)),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
    let (status, body) = server.operator("/v1/sessions", None, None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "missing_token")
    );
    let revoked = env.pg.open_sessions("app", "pw0", 1).await;
    let (status, report) = server
        .operator("/v1/revocations", Some(OPERATOR_TOKEN), Some(&revoke(true)))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "pg", "matched"), sorted(&revoked));
    let (status, report) = server
        .operator(
            "/v1/revocations",
            Some(OPERATOR_TOKEN),
            Some(&revoke(false)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "pg", "terminated"), sorted(&revoked));
    env.assert_pg_gone(&revoked, "revocation").await;
    let listed = env.pg.open_sessions("app", "pw0", 1).await;
    let (status, body) = server
        .operator("/v1/sessions?login=app", Some(OPERATOR_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["pid"] == listed[0]),
        "{body}"
    );
    assert_eq!(body["errors"].as_array().unwrap().len(), 3, "{body}");
    // The same failing targets, as the target probe renders them.
    let (status, body) = server
        .operator("/v1/targets", Some(OPERATOR_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.get("/readyz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("degraded")),
        "{body}"
    );

    // AWS: the Lambda hook and EventBridge for one rotation, a wrong API key, a secret
    // whose value is not JSON.
    let (arn, _) = env
        .moto
        .create_secret(
            "prod/orders",
            &rds_secret(&env.pg, "aws_app", AWS_APP_PASSWORD_OLD),
        )
        .await;
    // Not JSON at all (TestMoto::create_secret writes JSON).
    let plain = env
        .moto
        .client()
        .create_secret()
        .name("prod/plain")
        .secret_string(AWS_PLAIN_SECRET)
        .send()
        .await
        .unwrap();
    let (plain_arn, plain_version) = (plain.arn().unwrap(), plain.version_id().unwrap());
    let aws_old = env
        .pg
        .open_sessions("aws_app", AWS_APP_PASSWORD_OLD, 2)
        .await;
    env.rotate_pg("aws_app", AWS_APP_PASSWORD_NEW).await;
    let version = env
        .moto
        .rotate(&arn, &rds_secret(&env.pg, "aws_app", AWS_APP_PASSWORD_NEW))
        .await;
    let hook = json!({"SecretId": arn, "ClientRequestToken": version, "Step": "finishSecret"});
    let (status, report) = server
        .signed(
            "/v1/events/aws?wait=true",
            &hook,
            &format!("sm_{version}"),
            WEBHOOK_KEYS[0],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "pg", "terminated"), sorted(&aws_old));
    env.assert_pg_gone(&aws_old, "AWS hook").await;
    let (status, body) = server
        .eventbridge(&label_updated(&arn, &version), API_KEY)
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("duplicate")),
        "{body}"
    );
    let (status, body) = server
        .eventbridge(&label_updated(&arn, &version), WRONG_API_KEY)
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "invalid_api_key")
    );
    let (status, body) = server
        .eventbridge(&label_updated(plain_arn, plain_version), API_KEY)
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "unusable_secret"),
        "{body}"
    );

    // Vault: a forwarded rotation, then one through the websocket subscriber.
    let vault_old = env.pg.open_sessions("vault_app", "pw0", 1).await;
    let rotated = env.rotate_pg("vault_app", "pw1").await;
    env.vault.set_static_role(
        "",
        "database",
        "orders",
        "vault_app",
        "main-db",
        rotated,
        Rotation::Period(86400),
    );
    let (status, report) = server
        .event(
            "/v1/events/vault?wait=true",
            &vault_rotate_event("orders"),
            WEBHOOK_KEYS[0],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "pg", "terminated"), sorted(&vault_old));
    env.assert_pg_gone(&vault_old, "forwarded Vault event")
        .await;
    env.vault.wait_for_subscribers(1).await;
    let vault_old = env.pg.open_sessions("vault_app", "pw1", 1).await;
    let rotated = env.rotate_pg("vault_app", "pw2").await;
    env.vault.set_static_role(
        "",
        "database",
        "orders",
        "vault_app",
        "main-db",
        rotated,
        Rotation::Period(86400),
    );
    env.vault.publish(&vault_rotate_event("orders"));
    env.assert_pg_gone(&vault_old, "Vault subscriber").await;

    // The store goes away: its login is refused, so nothing can be audited.
    env.pg.exec("ALTER ROLE sever_store NOLOGIN").await;
    env.pg
        .exec(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'sever_store'",
        )
        .await;
    let (status, body) = server
        .event("/v1/events?wait=true", &rotation, WEBHOOK_KEYS[0])
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "{body}"
    );
    let (status, body) = server
        .operator(
            "/v1/revocations",
            Some(OPERATOR_TOKEN),
            Some(&revoke(false)),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "{body}"
    );
    let (status, _) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    env.pg.exec("ALTER ROLE sever_store LOGIN").await;

    server.stop().await;
}

/// Server B: Vault by static token; the watcher's first sight of a role is a rotation.
async fn drive_server_b(env: &Env, runtime: &Handle) {
    let old = env.pg.open_sessions("watch_app", "pw0", 1).await;
    let rotated = env.rotate_pg("watch_app", "pw1").await;
    env.vault.set_static_role(
        "",
        "database",
        "watched",
        "watch_app",
        "main-db",
        rotated,
        Rotation::Period(86400),
    );
    let server = Server::start(runtime, &env.config_b()).await;
    env.assert_pg_gone(&old, "Vault watcher").await;
    server.stop().await;
}

/// The CLI from the config alone: every operator command, and a store it cannot log in to.
async fn drive_cli(env: &Env) {
    let config = env.config_a("a", STORE_PASSWORD);
    let (code, stdout, _) = cli(&config, &["check-config"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("<redacted"), "{stdout}");
    let (code, _, _) = cli(&env.config_b(), &["--log-format", "json", "check-config"]);
    assert_eq!(code, Some(0));

    let listed = env.pg.open_sessions("app", "pw0", 1).await;
    let (code, stdout, _) = cli(&config, &["sessions", "--login", "app", "--json"]);
    assert_eq!(
        code,
        Some(i32::from(sever::cli::EXIT_INCOMPLETE)),
        "the wrong-password targets fail"
    );
    assert!(
        stdout.contains(&format!("\"pid\": {}", listed[0])),
        "{stdout}"
    );
    cli(&config, &["sessions"]);
    let (code, stdout, _) = cli(
        &config,
        &[
            "revoke",
            "--login",
            "app",
            "--target",
            "pg",
            "--reason",
            "CLI-LOGCHECK",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}");
    env.assert_pg_gone(&listed, "CLI revoke").await;
    let (code, stdout, _) = cli(
        &config,
        &[
            "revoke",
            "--login",
            "app",
            "--all-targets",
            "--reason",
            "CLI-LOGCHECK",
            "--dry-run",
        ],
    );
    assert_eq!(
        code,
        Some(i32::from(sever::cli::EXIT_INCOMPLETE)),
        "{stdout}"
    );
    assert!(stdout.contains("ERROR"), "{stdout}");

    let (code, stdout, _) = cli(&config, &["audit", "verify"]);
    assert_eq!(code, Some(0), "{stdout}");
    cli(&config, &["audit", "list", "--json", "--limit", "1000"]);

    let wrong_store = env.config_a("a-wrong-store", STORE_WRONG_PASSWORD);
    let (code, _, stderr) = cli(&wrong_store, &["sessions"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("store"), "{stderr}");
}

/// The whole trail as JSON lines, with proof that the flows above really ran.
fn export_and_check_trail(env: &Env) {
    let config = env.config_a("a", STORE_PASSWORD);
    let (code, stdout, _) = cli(&config, &["audit", "export", "--jsonl"]);
    assert_eq!(code, Some(0));
    let records: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect();
    let of = |kind: &str| -> Vec<&Value> { records.iter().filter(|r| r["kind"] == kind).collect() };
    // `detail` is exported as JSON; a string holding JSON is read the same way.
    let detail = |r: &Value| -> Value {
        match r["detail"].as_str() {
            Some(text) => serde_json::from_str(text).unwrap_or(Value::Null),
            None => r["detail"].clone(),
        }
    };
    let terminated: Vec<Value> = of("session.terminated").into_iter().map(detail).collect();
    for target in ["pg", "maria", "mssql"] {
        assert!(
            terminated.iter().any(|d| d["target"] == target),
            "no session terminated on {target}"
        );
    }
    let failed: Vec<Value> = of("target.failed").into_iter().map(detail).collect();
    for target in ["pg_wrong", "maria_wrong", "mssql_wrong"] {
        assert!(
            failed.iter().any(|d| d["target"] == target),
            "no failure on {target}"
        );
    }
    let rejected: Vec<Value> = of("request.rejected").into_iter().map(detail).collect();
    for code in [
        "invalid_signature",
        "replayed_delivery",
        "missing_header",
        "invalid_token",
        "missing_token",
        "invalid_api_key",
    ] {
        assert!(
            rejected.iter().any(|d| d["code"] == code),
            "no rejection {code}"
        );
    }
    assert!(
        of("action.planned").len() >= 7,
        "too few actions: {}",
        of("action.planned").len()
    );
    assert!(records.iter().any(|r| r["actor"] == "cli:responder"));
}

// ----- the check -----

#[test]
fn no_secret_reaches_a_log_line_an_error_body_or_the_audit_trail() {
    install_capture();
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sever-under-test")
        .enable_all()
        .build()
        .unwrap();
    let harness = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("harness")
        .on_thread_start(|| HARNESS.with(|h| h.set(true)))
        .enable_all()
        .build()
        .unwrap();
    HARNESS.with(|h| h.set(true));
    let server = server_runtime.handle().clone();

    let vault_tokens = harness.block_on(async {
        let env = Env::start().await;
        drive_server_a(&env, &server).await;
        drive_server_b(&env, &server).await;
        drive_cli(&env).await;
        export_and_check_trail(&env);
        // The tokens the Vault stand-in issued to sever are secrets too.
        let mut tokens: Vec<String> = env
            .vault
            .requests()
            .into_iter()
            .filter_map(|r| r.token)
            .filter(|t| t.starts_with("hvs."))
            .collect();
        tokens.sort();
        tokens.dedup();
        tokens
    });
    server_runtime.shutdown_timeout(Duration::from_secs(5));
    assert!(
        vault_tokens.iter().any(|t| t != VAULT_TOKEN),
        "sever never used an issued Vault token"
    );

    let mut secrets = known_secrets();
    secrets.extend(
        vault_tokens
            .into_iter()
            .map(|t| ("issued Vault token".to_owned(), t.into_bytes())),
    );

    let lines = log_lines();
    let sever_lines: Vec<&Line> = lines.iter().filter(|l| !l.harness).collect();
    // Not vacuous: the server's lines are there, from sever and from the crates under it.
    for wanted in [
        "sever listening",
        "event accepted",
        "logged in to Vault",
        "subscribed to Vault events",
        "watcher saw a rotation",
        " sqlx",
        " hyper",
        " tiberius",
        " aws_smithy",
        "rustify",
        // tungstenite's handshake target is capped at DEBUG, not silenced.
        "Client handshake done",
        // The delivery errors of the notification channels.
        "notification delivery failed",
    ] {
        assert!(
            sever_lines.iter().any(|l| l.text.contains(wanted)),
            "no captured server log line contains {wanted:?} ({} lines)",
            sever_lines.len()
        );
    }
    assert!(
        lines.iter().any(|l| l.harness),
        "harness lines are told apart"
    );

    let texts = TEXTS.lock().unwrap_or_else(|e| e.into_inner());
    // For reviewing what the check saw: SEVER_LOGCHECK_DUMP=<file>.
    if let Ok(path) = std::env::var("SEVER_LOGCHECK_DUMP") {
        let mut dump = String::new();
        for line in lines.iter() {
            dump.push_str(if line.harness {
                "[harness] "
            } else {
                "[checked] "
            });
            dump.push_str(&line.text);
        }
        for (label, text) in texts.iter() {
            dump.push_str(&format!("===== {label}\n{text}\n"));
        }
        std::fs::write(path, dump).unwrap();
    }
    let cli_logs = texts
        .iter()
        .filter(|(label, _)| label.ends_with("(stderr)"))
        .map(|(_, t)| t.as_str())
        .collect::<String>();
    assert!(
        cli_logs.contains("TRACE") && cli_logs.contains("sqlx"),
        "the CLI logged at TRACE"
    );

    // (where, log target if a log line, text)
    let mut corpus: Vec<(String, &str, &str)> = sever_lines
        .iter()
        .map(|l| {
            (
                format!("server log ({})", l.target),
                l.target.as_str(),
                l.text.as_str(),
            )
        })
        .collect();
    corpus.extend(
        texts
            .iter()
            .map(|(label, t)| (label.clone(), "", t.as_str())),
    );

    // One report per secret, encoding and place, with how often and the first context.
    let mut leaks: std::collections::BTreeMap<(String, &str, String), (usize, String)> =
        std::collections::BTreeMap::new();
    for (name, secret) in &secrets {
        let identifier = secret.as_slice() == AWS_ACCESS_KEY_ID.as_bytes();
        for (encoding, needle) in needles(secret) {
            for (place, target, text) in &corpus {
                if identifier && target.starts_with("aws_") {
                    continue;
                }
                if let Some(at) = text.find(&needle) {
                    let from = text[..at]
                        .char_indices()
                        .rev()
                        .nth(100)
                        .map_or(0, |(i, _)| i);
                    let context: String = text[from..].chars().take(260).collect();
                    leaks
                        .entry((name.clone(), encoding, place.clone()))
                        .or_insert((0, context))
                        .0 += 1;
                }
            }
        }
    }
    let leaks: Vec<String> = leaks
        .into_iter()
        .map(|((name, encoding, place), (n, context))| {
            format!("{name} ({encoding}) in {place}, {n} time(s), e.g. …{context}…")
        })
        .collect();
    let mut report = std::io::stderr().lock();
    let _ = writeln!(
        report,
        "log check: {} server log lines, {} texts, {} secrets",
        sever_lines.len(),
        texts.len(),
        secrets.len()
    );
    assert!(
        leaks.is_empty(),
        "{} leak(s):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}

/// The detector itself: a secret is found however it is wrapped.
#[test]
fn encoded_and_embedded_secrets_are_found() {
    let secret = PG_ADMIN_PASSWORD.as_bytes();
    let found = |text: &str| {
        needles(secret)
            .iter()
            .any(|(_, n)| text.contains(n.as_str()))
    };
    assert!(found(&format!("password={PG_ADMIN_PASSWORD} user=x")));
    assert!(found(&format!(
        "url=postgres://sever_admin:{}@127.0.0.1/postgres",
        encode_bytes(secret)
    )));
    let form: String = url::form_urlencoded::byte_serialize(secret).collect();
    assert!(found(&format!("body=a&password={form}&b")));
    // Inside a longer base64 value, at every alignment (e.g. `Basic base64(user:password)`).
    for user in ["", "u:", "us:", "use:"] {
        let credentials = format!("{user}{PG_ADMIN_PASSWORD}:tail");
        assert!(found(&format!(
            "authorization: Basic {}",
            STANDARD.encode(&credentials)
        )));
        assert!(found(&URL_SAFE_NO_PAD.encode(&credentials)));
    }
    assert!(found(&format!(
        "packet={}",
        hex::encode(
            b"\x00\x01"
                .iter()
                .chain(secret)
                .copied()
                .collect::<Vec<u8>>()
        )
    )));
    assert!(found(&format!("{:?}", secret.to_vec())));
    assert!(!found("password=<redacted> user=x"));
}
