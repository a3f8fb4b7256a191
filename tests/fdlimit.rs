//! Running out of file descriptors. `sever serve` runs as a child process whose soft and hard
//! `RLIMIT_NOFILE` are both lowered before exec, so raising soft to hard cannot undo it, and
//! its intake is flooded with idle connections: operators must still be served, targets still
//! reached and checkpoints still written. Also: connection caps that cannot fit refuse to
//! start, default caps shrink and are logged, and a checkpoint file that cannot be appended
//! to shows on `/readyz`.

/// The parts of `tests/it/support` this binary uses; it uses only some of their helpers.
#[path = "it/support"]
#[allow(dead_code)]
mod support {
    pub mod config;
    pub mod sever;
}

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::sever::{TOKEN, TestServer, Workspace, create_admin};
use reqwest::StatusCode;
use serde_json::Value;
use sever_testkit::pg::TestPostgres;
use sever_testkit::util::free_port;
use tokio::net::TcpStream;

/// The child's open-file limit, soft and hard: low, so that the flood stays small.
const LIMIT: u64 = 256;
/// Idle connections sent to the intake: more than the child could hold were it to accept all.
const FLOOD: usize = LIMIT as usize + 64;
/// Upper bound for anything awaited; fails clearly, never paces.
const WAIT: Duration = Duration::from_secs(10);

/// `sever serve` in a child with `RLIMIT_NOFILE` lowered to `limit`, logging JSON to a file.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    fn spawn(config: &Path, log: PathBuf, limit: u64, args: &[&str]) -> Serve {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sever"));
        command
            .arg("--config")
            .arg(config)
            .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("SEVER_LOG", "info")
            .env_remove("SEVER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: runs in the forked child before exec and only makes the setrlimit system
        // call; it allocates nothing unless the call fails.
        unsafe {
            command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit));
        }
        let child = command.spawn().expect("start sever serve");
        Serve { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `fields` of the first log line with `message`.
    fn logged(&self, message: &str) -> Option<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["fields"]["message"] == message)
            .map(|l| l["fields"].clone())
    }

    /// Waits for the "sever listening" line; panics if the child exits first.
    async fn listening(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(fields) = self.logged("sever listening") {
                return fields;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sever exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "not listening after 60 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many descriptors the child has open now.
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
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

fn checkpoint_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_locks_out_neither_operators_nor_checkpoints() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("app", "apppw").await;
    let pid = pg.open_sessions("app", "apppw", 1).await[0];

    let ws = Workspace::new();
    let checkpoints = ws.path("checkpoints.jsonl");
    // Idle connections are kept far beyond the test's length: only the caps stand between the
    // flood and the last descriptor.
    let config = ws
        .config()
        .set("server.header_read_timeout", "60s")
        .set("audit.checkpoint_interval", "1s")
        .set("audit.checkpoint_file", checkpoints.display().to_string());
    let config = ws
        .target_config(config, "main", &pg)
        .set("targets.main.pool_size", 2)
        .toml();
    let operator = format!("127.0.0.1:{}", free_port());
    let mut serve = Serve::spawn(
        &ws.write_config(&config),
        ws.path("sever.log"),
        LIMIT,
        &["--operator-listen", &operator],
    );
    let listening = serve.listening().await;
    let intake = listening["intake"].as_str().unwrap().to_owned();
    // Without caps sized to the limit, the flood takes every descriptor.
    let caps = serve.logged("connection caps sized to the open-file limit");
    let intake_cap = caps.as_ref().map_or(LIMIT as usize, |c| {
        c["max_connections"].as_u64().unwrap() as usize
    });

    let own = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        own > FLOOD as u64 + 256,
        "the test's own limit {own} is too low for the flood"
    );
    // The fewest seen: a checkpoint being appended holds one more for a moment.
    let mut before = usize::MAX;
    for _ in 0..5 {
        before = before.min(serve.open_fds());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // All at once: past the cap and the accept queue, a connect waits for SYN retries, and
    // those still waiting stay so (until the set is dropped) as part of the flood.
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        connecting.spawn(TcpStream::connect(intake.clone()));
    }
    // The flood holds once sever has accepted all it will: up to its cap, or up to the limit.
    let saturated = (before + intake_cap).min(LIMIT as usize);
    let deadline = Instant::now() + WAIT;
    while serve.open_fds() < saturated {
        assert!(
            Instant::now() < deadline,
            "sever holds {} descriptors, not the {saturated} expected once the flood is accepted",
            serve.open_fds()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written_before = checkpoint_lines(&checkpoints);
    // sever has accepted them, but the test's own connect tasks may not all have run yet:
    // wait for them (past the cap, the rest sit in the accept queue, also connected).
    let mut flood = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        while let Some(connected) = connecting.try_join_next() {
            flood.push(connected.unwrap().unwrap());
        }
        if flood.len() > intake_cap || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        flood.len() > intake_cap,
        "{} connections for a cap of {intake_cap}",
        flood.len()
    );

    // An operator call that needs a new connection to the target.
    let client = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let response = client
        .get(format!(
            "http://{operator}/v1/sessions?target=main&login=app"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "operator call not served while the flood holds ({} descriptors open): {e}",
                serve.open_fds()
            )
        });
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    let pids: Vec<i64> = report["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(pids, vec![i64::from(pid)], "{report}");

    // A checkpoint written after the flood took hold reaches the file.
    let deadline = Instant::now() + WAIT;
    while checkpoint_lines(&checkpoints) <= written_before {
        assert!(
            Instant::now() < deadline,
            "no checkpoint reached the file while the flood holds:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&checkpoints).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        last["index"].as_i64().unwrap() > written_before as i64,
        "{last}"
    );
    let readiness: Value = client
        .get(format!("http://{operator}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(readiness["checkpoint_file"]["ok"], true, "{readiness}");

    // All of it happened while the flood still held: sever closed none of those connections.
    for (i, stream) in flood.iter().enumerate() {
        let mut buf = [0u8; 1];
        match stream.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("flood connection {i} did not stay open and idle: {other:?}"),
        }
    }
    let caps = caps.expect("the connection caps were logged");
    let operator_cap = caps["operator_max_connections"].as_u64().unwrap() as usize;
    assert!(
        intake_cap < FLOOD && operator_cap > 0 && caps["open_file_limit"] == LIMIT,
        "{caps}"
    );
    assert!(
        serve
            .logged("could not write an audit checkpoint")
            .is_none(),
        "{}",
        serve.log_text()
    );
}

/// Runs `sever serve` under `limit` with `server` as its `[server]` table until it is
/// listening or exits; returns the child.
async fn serve_with(ws: &Workspace, server: &str, limit: u64, args: &[&str]) -> Serve {
    let config = ws
        .config()
        .merge_toml(&format!("[server]\n{server}\n"))
        .toml();
    Serve::spawn(&ws.write_config(&config), ws.path("sever.log"), limit, args)
}

#[tokio::test]
async fn configured_caps_that_cannot_fit_refuse_to_start() {
    let ws = Workspace::new();
    let mut serve = serve_with(&ws, "max_connections = 1000", LIMIT, &[]).await;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sever started with caps that cannot fit:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = serve.log_text();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(
            "server.max_connections = 1000 cannot fit under the open-file limit: of 256 descriptors"
        ) && log.contains("raise the hard limit"),
        "{log}"
    );
    assert!(serve.logged("sever listening").is_none(), "{log}");
}

#[tokio::test]
async fn default_caps_shrink_to_the_limit_and_are_logged() {
    // One listener under the limit of the test: all that is left goes to it.
    let ws = Workspace::new();
    let mut serve = serve_with(&ws, "", LIMIT, &[]).await;
    serve.listening().await;
    let caps = serve
        .logged("connection caps sized to the open-file limit")
        .expect("the chosen caps are logged");
    let intake = caps["max_connections"].as_u64().unwrap();
    assert_eq!(caps["open_file_limit"], LIMIT, "{caps}");
    assert!(caps["operator_max_connections"].is_null(), "{caps}");
    assert_eq!(intake + caps["reserved"].as_u64().unwrap(), LIMIT, "{caps}");
    assert!(intake > 0 && intake < 1024, "{caps}");
    assert!(serve.log_text().contains("they were lowered to fit"));
    drop(serve);

    // systemd's default of 1024 with two listeners: both defaults shrink, and the sum fits.
    let ws = Workspace::new();
    let operator = format!("127.0.0.1:{}", free_port());
    let mut serve = serve_with(&ws, "", 1024, &["--operator-listen", &operator]).await;
    serve.listening().await;
    let caps = serve
        .logged("connection caps sized to the open-file limit")
        .expect("the chosen caps are logged");
    let intake = caps["max_connections"].as_u64().unwrap();
    let operator_cap = caps["operator_max_connections"].as_u64().unwrap();
    assert_eq!(caps["open_file_limit"], 1024, "{caps}");
    assert!(intake < 1024 && operator_cap == 64, "{caps}");
    assert_eq!(
        intake + operator_cap + caps["reserved"].as_u64().unwrap(),
        1024,
        "{caps}"
    );
}

#[tokio::test]
async fn a_checkpoint_file_that_cannot_be_appended_to_degrades_readiness() {
    let ws = Workspace::new();
    let checkpoints = ws.path("checkpoints.jsonl");
    let config = ws
        .config()
        .set("audit.checkpoint_interval", "1s")
        .set("audit.checkpoint_file", checkpoints.display().to_string())
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let (status, body) = server.readyz().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checkpoint_file"]["ok"], true, "{body}");

    // A directory where the file was: appending fails even for root.
    std::fs::remove_file(&checkpoints).unwrap();
    std::fs::create_dir(&checkpoints).unwrap();
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let (status, body) = server.readyz().await;
        if body["checkpoint_file"]["ok"] == false {
            assert_eq!(status, StatusCode::OK, "{body}");
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never showed the failure: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["store"]["ok"], true, "{body}");
    let error = body["checkpoint_file"]["error"].as_str().unwrap();
    assert!(
        error.contains("cannot append to the checkpoint file")
            && !error.contains("checkpoints.jsonl"),
        "{body}"
    );

    // Appendable again: the next checkpoint reaches the file and readiness recovers.
    std::fs::remove_dir(&checkpoints).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = server.readyz().await;
        // Readiness may see the file appendable before the writer's next checkpoint is due.
        if body["checkpoint_file"]["ok"] == true && checkpoint_lines(&checkpoints) >= 1 {
            assert_eq!(
                (status, &body["status"]),
                (StatusCode::OK, &Value::from("ready"))
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never recovered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}
