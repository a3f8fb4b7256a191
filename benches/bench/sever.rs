//! The sever under test: the release binary as a separate process, and the signed events
//! the scenarios send it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The webhook signing secret sever is configured with.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// `sever serve` (the release binary) with a config in its own temp dir.
pub struct Sever {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
    /// From spawn to `/readyz` answering 200.
    pub ready_after: Duration,
}

/// Where the sever under test keeps its store.
pub enum Store<'a> {
    /// The embedded SQLite store, in the process's temp dir.
    Sqlite,
    /// A PostgreSQL store whose URL (with its password) is in this file.
    Postgres(&'a Path),
}

impl Sever {
    /// The release binary under test on the embedded SQLite store.
    pub async fn start(targets: &str, credentials: &str) -> Self {
        Self::launch(&sever_bin(), Store::Sqlite, targets, credentials).await
    }

    /// `bin` (the release binary under test, or a baseline) on `store`, with these targets
    /// and credentials (TOML tables); returns once `/readyz` answers 200.
    pub async fn launch(bin: &Path, store: Store<'_>, targets: &str, credentials: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("webhook.secret");
        std::fs::write(&secret, SECRET).unwrap();
        let store = match store {
            Store::Sqlite => format!(
                "url = \"sqlite://{}?mode=rwc\"",
                dir.path().join("sever.db").display()
            ),
            Store::Postgres(file) => format!("url = {{ file = {:?} }}", file.display().to_string()),
        };
        let config = format!(
            "protected_logins = [\"postgres\"]\n\
             [store]\n{store}\n\
             [webhooks]\nsecrets = [{{ file = {secret:?} }}]\n\
             [server]\nmax_body_bytes = 65536\n\
             {targets}{credentials}",
        );
        let path = dir.path().join("sever.toml");
        std::fs::write(&path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&path)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            // SEVER_BENCH_LOG (e.g. `debug,sqlx=debug`) shows where a figure's time goes.
            .env(
                "SEVER_LOG",
                std::env::var("SEVER_BENCH_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the release binary (run scripts/bench.sh)");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        loop {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "sever never became ready"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Self {
            ready_after: started.elapsed(),
            child,
            base,
            _dir: dir,
            client,
        }
    }

    /// Rotates `credential` (a signed `revoked` event, `?wait=true`) and returns how long
    /// sever took to answer; the action must have completed.
    pub async fn rotate(&self, credential: &str) -> Duration {
        let t = Instant::now();
        let (status, report) = self
            .event(
                &json!({"credential": credential, "kind": "revoked"}),
                true,
                SECRET,
            )
            .await;
        let took = t.elapsed();
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["status"], "completed", "{report}");
        took
    }

    /// A signed event; `Ok` with the status and body.
    pub async fn event(&self, body: &Value, wait: bool, secret: &str) -> (u16, Value) {
        let body = serde_json::to_vec(body).unwrap();
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let ts = chrono::Utc::now().timestamp();
        let signature = sever::intake::webhook::sign(secret, &id, ts, &body).unwrap();
        let path = if wait {
            "/v1/events?wait=true"
        } else {
            "/v1/events"
        };
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Resident set size now, and its peak, in MiB (from /proc).
    pub fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Sever {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sever_bin() -> PathBuf {
    std::env::var_os("SEVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/sever"))
}

/// Rotations before the measured ones, not measured: they open sever's connections (to the
/// targets and a PostgreSQL store) and prepare its statements on each, one round trip per
/// statement and connection, which a sever that has been running did long ago. Several,
/// because a pool hands out its idle connections in turn, so each rotation prepares its
/// statements on other ones.
pub const WARM_UP: usize = 8;

/// Runs [`WARM_UP`] rotations of `credential`, each on sessions `open` opens and then drops.
pub async fn warm_up<S, F, Fut>(sever: &Sever, credential: &str, open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    for _ in 0..WARM_UP {
        let sessions = open().await;
        sever.rotate(credential).await;
        drop(sessions);
    }
}
