//! The store failing under sever, for real: the SQLite file's filesystem filling up (a small
//! tmpfs), the store file deleted while sever serves, and a PostgreSQL store whose
//! connections are killed mid-transaction. Each time sever refuses with `503` while it cannot
//! keep what it accepts, `/readyz` says so, and it recovers without a restart when it can.

/// The parts of `tests/it/support` this binary uses; it uses only some of their helpers.
#[path = "it/support"]
#[allow(dead_code)]
mod support {
    pub mod config;
    pub mod sever;
}

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::support::config::file;
use crate::support::sever::{TestServer, Workspace, create_admin, now, pids, sorted};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;

/// Upper bound for anything that should take a second or two.
const PATIENCE: Duration = Duration::from_secs(15);

/// A size-limited tmpfs mounted for one test and unmounted when dropped. Mounting needs
/// root; a mount that fails fails the test.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Fills the filesystem to the last byte with `name`.
    fn fill(&self, name: &str) {
        let mut file = std::fs::File::create(self.path(name)).unwrap();
        let mut chunk = vec![0u8; 64 * 1024];
        while !chunk.is_empty() {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => chunk.truncate(chunk.len() / 2),
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = file.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a server task may still hold the store open for a moment.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Everything sever logs in this test binary, as JSON lines (tests tell theirs apart by
/// their own paths and action ids).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .json()
            .with_env_filter("sever=info")
            .with_writer(move || LogWriter(sink.clone()))
            .init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logged lines at `level` that mention `text`.
fn logged(level: &str, text: &str) -> Vec<Value> {
    let bytes = logs().lock().unwrap().clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| l.contains(text))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["level"] == level)
        .collect()
}

/// Polls `/readyz` until it answers `want`; panics after [`PATIENCE`].
async fn until_ready_is(server: &TestServer, want: StatusCode) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = server.readyz().await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz is {status}, not {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a revocation event for credential `orders` without waiting for it to finish.
async fn event_nowait(server: &TestServer) -> (StatusCode, Value) {
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let body = serde_json::to_vec(&json!({"credential": "orders", "kind": "revoked"})).unwrap();
    let r = server
        .post_signed(
            "/v1/events",
            &body,
            &id,
            now(),
            crate::support::sever::SECRET,
        )
        .await;
    (r.status(), r.json().await.unwrap())
}

fn revoke() -> Value {
    json!({"credential": "orders", "kind": "revoked"})
}

fn assert_unavailable(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
}

/// A target PostgreSQL with sever's admin login and the login `app`.
async fn target() -> TestPostgres {
    let pg = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    pg
}

/// The workspace's config with the store at `store` (else the workspace's own) and
/// credential `orders` on target `main`.
fn config(ws: &Workspace, store: Option<toml::Value>, pg: &TestPostgres, extra: &str) -> String {
    let mut config = ws.target_config(ws.config(), "main", pg);
    if let Some(store) = store {
        config = config.set("store.url", store);
    }
    config
        .merge_toml(extra)
        .credential("orders", &[("main", "app")])
        .toml()
}

#[tokio::test]
async fn a_full_store_refuses_then_recovers_without_a_restart_once_space_is_back() {
    let _ = logs();
    let pg = target().await;
    let ws = Workspace::new();
    let fs = Tmpfs::mount("2m");
    let store = fs.path("sever.db");
    let url = format!("sqlite://{}?mode=rwc", store.display());
    let server = TestServer::start(&ws.write_config(&config(&ws, Some(url.into()), &pg, ""))).await;
    let (status, report) = server.event(&revoke()).await;
    assert_eq!(status, StatusCode::OK, "{report}");

    fs.fill("filler");
    // The WAL may still have room for a commit or two; then every event is refused.
    let mut refused = None;
    for _ in 0..50 {
        let (status, body) = server.event(&revoke()).await;
        if status != StatusCode::OK {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("events were still accepted on a full filesystem");
    assert_unavailable(status, &body);
    let (status, body) = server.event(&revoke()).await;
    assert_unavailable(status, &body);
    let (status, ready) = server.readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["status"], "unavailable", "{ready}");
    assert_eq!(ready["store"]["ok"], false, "{ready}");
    // The file itself is still the one sever opened: only the writes fail.
    assert_eq!(ready["store_file"]["ok"], true, "{ready}");

    std::fs::remove_file(fs.path("filler")).unwrap();
    let victims = pg.open_sessions("app", "pw", 1).await;
    let (status, report) = server.event(&revoke()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the first event after space came back: {report}"
    );
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&victims));
    assert!(pg.wait_gone(victims[0], PATIENCE).await);
    let (status, ready) = server.readyz().await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["status"], "ready", "{ready}");
    server.stop().await;
}

#[tokio::test]
async fn a_deleted_store_file_is_noticed_refused_and_work_accepted_before_finishes() {
    let _ = logs();
    let pg = target().await;
    let ws = Workspace::new();
    let store = ws.path("sever.db");
    let extra = "[queue]\nmax_backoff = \"200ms\"\n";
    let server = TestServer::start(&ws.write_config(&config(&ws, None, &pg, extra))).await;
    let victims = pg.open_sessions("app", "pw", 1).await;
    // Accepted while the target refuses sever's login: the action waits, retrying, when the
    // file goes.
    pg.exec("ALTER ROLE sever_admin NOLOGIN").await;
    let (status, body) = event_nowait(&server).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let before = body["action_id"].as_str().unwrap().to_owned();

    let mut wal = store.clone().into_os_string();
    wal.push("-wal");
    std::fs::remove_file(&store).unwrap();
    std::fs::remove_file(&wal).unwrap();
    // Noticed by the timer, without any request.
    let deadline = Instant::now() + PATIENCE;
    let path = std::fs::canonicalize(ws.dir.path())
        .unwrap()
        .join("sever.db")
        .display()
        .to_string();
    while logged("ERROR", &path).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the loss of {path} was not logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = until_ready_is(&server, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(ready["status"], "unavailable", "{ready}");
    assert_eq!(ready["store_file"]["ok"], false, "{ready}");

    for _ in 0..3 {
        let (status, body) = event_nowait(&server).await;
        assert_unavailable(status, &body);
    }
    let (status, body) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "app", "targets": ["main"], "reason": "INC-1"}),
        )
        .await;
    assert_unavailable(status, &body);

    // The action accepted before finishes from the open file, and is named in the log.
    pg.exec("ALTER ROLE sever_admin LOGIN").await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, status) = server.operator_get(&format!("/v1/actions/{before}")).await;
        if status["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "still not finished: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pg.wait_gone(victims[0], PATIENCE).await);
    assert!(
        !logged("ERROR", &before).is_empty(),
        "action {before} finished in the lost file without a log line naming it"
    );
    // Still refused: the file stays lost until a restart.
    let (status, body) = event_nowait(&server).await;
    assert_unavailable(status, &body);
    server.stop().await;
}

#[tokio::test]
async fn a_deleted_store_directory_is_noticed_before_the_next_acknowledgement() {
    let _ = logs();
    let pg = target().await;
    let ws = Workspace::new();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("sever.db");
    let url = format!("sqlite://{}?mode=rwc", store.display());
    let server = TestServer::start(&ws.write_config(&config(&ws, Some(url.into()), &pg, ""))).await;
    let (status, body) = event_nowait(&server).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let path = std::fs::canonicalize(&store).unwrap();
    std::fs::remove_dir_all(dir.path()).unwrap();
    // At once, not after the timer: the check runs before each commit.
    let (status, body) = event_nowait(&server).await;
    assert_unavailable(status, &body);
    let (status, ready) = server.readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["store_file"]["ok"], false, "{ready}");
    assert!(
        !logged("ERROR", &path.display().to_string()).is_empty(),
        "no error names {}",
        path.display()
    );
    server.stop().await;
}

/// The chain lock sever's appends take on PostgreSQL (see `begin_chain_tx`).
const CHAIN_LOCK: i64 = 7262837;

#[tokio::test]
async fn a_postgres_store_connection_killed_mid_transaction_is_replaced_and_readiness_tells() {
    let (store, pg) = tokio::join!(
        async {
            let store = tokio::task::spawn_blocking(TestPostgres::start)
                .await
                .unwrap();
            store.exec("CREATE DATABASE sever_store").await;
            store
        },
        target()
    );
    let ws = Workspace::new();
    let url = file(&ws.secret_path("store.url", &store.superuser_url("sever_store")));
    let server = TestServer::start(&ws.write_config(&config(&ws, Some(url), &pg, ""))).await;
    let (status, report) = server.event(&revoke()).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(server.readyz().await.0, StatusCode::OK);

    // Hold the chain lock, so sever's next append waits inside its transaction.
    let (mut holder, holder_pid) = store.session("postgres", "", "sever_store", "").await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(CHAIN_LOCK)
        .execute(&mut holder)
        .await
        .unwrap();
    let client = server.client.clone();
    let blocked = tokio::spawn({
        let url = server.url("/v1/events");
        async move {
            let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
            let body = serde_json::to_vec(&revoke()).unwrap();
            let ts = now();
            let signature =
                sever::intake::webhook::sign(crate::support::sever::SECRET, &id, ts, &body)
                    .unwrap();
            client
                .post(url)
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    // Waiting in a transaction on the lock: appends cannot go through, and readiness,
    // which writes the same way, says so.
    let waiting = "SELECT pid FROM pg_stat_activity WHERE datname = 'sever_store' \
                   AND wait_event_type = 'Lock' AND pid <> $1";
    let (mut admin, _) = store.session("postgres", "", "sever_store", "").await;
    let deadline = Instant::now() + PATIENCE;
    let victims: Vec<i32> = loop {
        let pids: Vec<i32> = sqlx::query_scalar(waiting)
            .bind(holder_pid)
            .fetch_all(&mut admin)
            .await
            .unwrap();
        if !pids.is_empty() {
            break pids;
        }
        assert!(
            Instant::now() < deadline,
            "no append is waiting for the lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, ready) = server.readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["store"]["ok"], false, "{ready}");

    // Kill every store connection of sever's, mid-transaction, then let go of the lock.
    let killed: Vec<i32> = sqlx::query_scalar(
        // `OFFSET 0` keeps the filter ahead of the termination (the planner may not merge).
        "SELECT pid FROM (SELECT pid FROM pg_stat_activity \
         WHERE datname = 'sever_store' AND pid <> $1 AND pid <> pg_backend_pid() OFFSET 0) s \
         WHERE pg_terminate_backend(pid)",
    )
    .bind(holder_pid)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(victims.iter().all(|v| killed.contains(v)), "{killed:?}");
    // All of them gone before going on, so none dies under a later request by chance.
    for pid in killed {
        assert!(store.wait_gone(pid, PATIENCE).await);
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(CHAIN_LOCK)
        .execute(&mut holder)
        .await
        .unwrap();
    let answered = blocked.await.unwrap();
    assert!(
        answered == StatusCode::ACCEPTED || answered == StatusCode::SERVICE_UNAVAILABLE,
        "{answered}"
    );

    let sessions = pg.open_sessions("app", "pw", 1).await;
    let (status, report) = server.event(&revoke()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the first event after the kill: {report}"
    );
    assert_eq!(pids(&report, "main", "terminated"), sorted(&sessions));
    let ready = until_ready_is(&server, StatusCode::OK).await;
    assert_eq!(ready["store"]["ok"], true, "{ready}");
    assert_eq!(ready["store_file"]["detail"], "not a file", "{ready}");
    server.stop().await;
}
