//! Runs the real sever server in-process on port 0 against a config written to a temp dir,
//! with secrets in files, and sends it signed or authenticated requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sever::intake::webhook::sign;
use sever::operator::token_hash;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use sever_testkit::pg::TestPostgres;

use super::config::{ConfigBuilder, file};

/// The webhook signing secret every test config trusts.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A secret sever does not trust.
pub const WRONG_SECRET: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
/// The operator token every test config accepts (for operator "alice").
pub const TOKEN: &str = "sev_test_operator_token_for_alice_0123456789";
/// The EventBridge API key the AWS test configs accept.
pub const API_KEY: &str = "eb-test-api-key-0123456789";
/// Password of sever's own least-privilege login on test targets.
pub const ADMIN_PASSWORD: &str = "severadminpw";

/// Creates sever's least-privilege admin login on `pg`: it can see every session and
/// signal non-superuser backends, nothing more.
pub async fn create_admin(pg: &TestPostgres) {
    pg.exec(&format!(
        "CREATE ROLE sever_admin LOGIN PASSWORD '{ADMIN_PASSWORD}' \
         IN ROLE pg_signal_backend, pg_read_all_stats"
    ))
    .await;
}

/// A temp dir holding the config, its secret files and the SQLite store.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a secret file and returns its path (for [`file`]).
    pub fn secret_path(&self, name: &str, value: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        path.display().to_string()
    }

    /// SQLite URL of the store.
    fn store_path_url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.path("sever.db").display())
    }

    /// A target table for `pg`, with sever's admin URL in a secret file; `extra` is TOML
    /// inside `[targets.<id>]` (keys, or sub-tables under their full names).
    pub fn target(&self, id: &str, pg: &TestPostgres, extra: &str) -> String {
        self.target_config(ConfigBuilder::new(), id, pg)
            .merge_toml(&format!("[targets.{id}]\n{extra}\n"))
            .toml()
    }

    /// `config` with a PostgreSQL target `id` for `pg`, sever's admin URL in a secret file.
    pub fn target_config(
        &self,
        config: ConfigBuilder,
        id: &str,
        pg: &TestPostgres,
    ) -> ConfigBuilder {
        let url = self.secret_path(
            &format!("{id}.url"),
            &pg.url("sever_admin", ADMIN_PASSWORD, "postgres"),
        );
        config.target_postgres(id, &url)
    }

    /// The common head of a config: store, webhook secret, operator, timeouts.
    pub fn config(&self) -> ConfigBuilder {
        let secret = self.secret_path("webhook.secret", SECRET);
        ConfigBuilder::new()
            .set("protected_logins", vec!["postgres"])
            .set("store.url", self.store_path_url())
            .set("webhooks.secrets", vec![file(&secret)])
            .set("termination.timeout", "5s")
            .set("termination.verify_timeout", "3s")
            .operator("alice", &token_hash(TOKEN))
    }

    /// [`Workspace::config`] as TOML text.
    pub fn base_config(&self) -> String {
        self.config().toml()
    }

    /// Writes `text` as the config file and returns its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.path("sever.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `config` with the `[aws]` tables for a moto endpoint, with static keys and the
    /// EventBridge API key in files, trusting `topics`.
    pub fn aws(&self, config: ConfigBuilder, endpoint: &str, topics: &[&str]) -> ConfigBuilder {
        config
            .set("aws.region", "us-east-1")
            .set("aws.endpoint_url", endpoint)
            .set(
                "aws.static_credentials.access_key_id",
                file(&self.secret_path("aws.key", "testing")),
            )
            .set(
                "aws.static_credentials.secret_access_key",
                file(&self.secret_path("aws.secret", "testing")),
            )
            .set(
                "aws.eventbridge.api_keys",
                vec![file(&self.secret_path("eventbridge.key", API_KEY))],
            )
            .set("aws.sns.topics", topics.to_vec())
    }

    /// `config` with `[vault]` at `address`, logging in with `token` (in a secret file).
    pub fn vault_token(&self, config: ConfigBuilder, address: &str, token: &str) -> ConfigBuilder {
        config
            .set("vault.address", address)
            .set("vault.auth.method", "token")
            .set(
                "vault.auth.token",
                file(&self.secret_path("vault.token", token)),
            )
    }

    /// The details of every audit record of `kind`, oldest first.
    pub async fn records(&self, kind: &str) -> Vec<Value> {
        self.records_by(kind)
            .await
            .into_iter()
            .map(|(_, detail)| detail)
            .collect()
    }

    /// Every audit record of `kind`, oldest first: its actor and its details.
    pub async fn records_by(&self, kind: &str) -> Vec<(String, Value)> {
        self.audit()
            .await
            .list(&sever::audit::ListFilter {
                kind: Some(kind.into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .map(|r| (r.actor.clone(), serde_json::from_str(&r.detail).unwrap()))
            .collect()
    }

    /// Opens the audit trail of this workspace's store directly.
    pub async fn audit(&self) -> sever::audit::Audit {
        let url = format!("sqlite://{}?mode=rw", self.path("sever.db").display());
        let store = sever::store::Store::connect(&secrecy::SecretString::from(url))
            .await
            .unwrap();
        sever::audit::Audit::new(store)
    }
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The operator API's own listener, when started with one ([`TestServer::start_split`]).
    pub operator_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), sever::ServeError>>>,
}

impl TestServer {
    /// Starts sever with the config at `path`, on a free port.
    pub async fn start(path: &Path) -> Self {
        Self::start_with(path, sever::RunOptions::default()).await
    }

    /// Starts sever with the operator API on a second free port, apart from the intake.
    pub async fn start_split(path: &Path) -> Self {
        let operator = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = sever::RunOptions {
            operator_listener: Some(operator),
            ..Default::default()
        };
        Self::start_with(path, options).await
    }

    /// Starts sever with replaced parts (e.g. the SNS HTTP client).
    pub async fn start_with(path: &Path, options: sever::RunOptions) -> Self {
        let config = sever::config::Config::load(path).expect("test config is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let operator_addr = options
            .operator_listener
            .as_ref()
            .map(|l| l.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = rx.await;
        };
        let handle = tokio::spawn(sever::run_with(config, listener, shutdown, options));
        let server = Self {
            addr,
            operator_addr,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            handle: Some(handle),
        };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.client.get(self.url("/healthz")).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("sever did not become healthy");
    }

    /// Graceful stop; panics if the server returned an error.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the operator listener (the only listener unless started split).
    pub fn operator_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.operator_addr.unwrap_or(self.addr))
    }

    /// Posts `body` to /v1/events signed with `secret` under `id` at `timestamp`.
    pub async fn post_signed(
        &self,
        path: &str,
        body: &[u8],
        id: &str,
        timestamp: i64,
        secret: &str,
    ) -> reqwest::Response {
        let signature = sign(secret, id, timestamp, body).unwrap();
        self.client
            .post(self.url(path))
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Sends a correctly signed event with a fresh id and `?wait=true`; returns status and body.
    pub async fn event(&self, event: &Value) -> (StatusCode, Value) {
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let body = serde_json::to_vec(event).unwrap();
        let r = self
            .post_signed("/v1/events?wait=true", &body, &id, now(), SECRET)
            .await;
        (r.status(), r.json().await.unwrap())
    }

    /// An operator request with the test token, on the operator listener.
    pub async fn operator_post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.operator_url(path))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// `GET /readyz`: its status and body.
    pub async fn readyz(&self) -> (StatusCode, Value) {
        let r = self.client.get(self.url("/readyz")).send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }

    pub async fn operator_get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(self.operator_url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// pids listed under `key` (`terminated`, `matched`, `remaining`, …) for `target` in a report.
/// One target's part of an action report.
pub fn target_report<'a>(report: &'a Value, target: &str) -> &'a Value {
    report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target)
        .unwrap_or_else(|| panic!("no target {target} in {report}"))
}

pub fn pids(report: &Value, target: &str, key: &str) -> Vec<i64> {
    let t = target_report(report, target);
    let mut pids: Vec<i64> = t[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {t}"))
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    pids.sort();
    pids
}

/// The server clock of `pg` now, as RFC 3339 (to time a rotation exactly as the DB sees it).
pub async fn db_now(conn: &mut sqlx::PgConnection) -> String {
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(conn)
        .await
        .unwrap();
    now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// pids as a report lists them: sorted, as i64.
pub fn sorted(pids: &[i32]) -> Vec<i64> {
    let mut v: Vec<i64> = pids.iter().map(|p| i64::from(*p)).collect();
    v.sort();
    v
}

/// Runs the real `sever` binary with `--config config` as user `responder`.
pub fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sever"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("USER", "responder")
        .env_remove("SUDO_USER")
        .output()
        .expect("run sever")
}

/// A process's standard output as text.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A process's standard error as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Session ids as a report lists them: sorted.
pub fn sorted_ids(ids: &[i64]) -> Vec<i64> {
    let mut v = ids.to_vec();
    v.sort();
    v
}
