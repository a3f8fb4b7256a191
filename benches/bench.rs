//! sever's benchmarks: rotation-to-clean latency against the SQL floor and the per-pid script
//! people write today, fan-out across targets, intake throughput, and footprint. Figures,
//! not pass/fail. Run with `scripts/bench.sh`, which builds the release binary this drives
//! (`SEVER_BIN`) and starts nothing else: the benchmark starts its own throwaway PostgreSQL
//! clusters (temp dirs, free ports, `max_connections` raised) and removes them afterwards.
//!
//! Environment: `SEVER_BENCH_RUNS` (repetitions per figure, default 7),
//! `SEVER_BENCH_INTAKE_SECS` (length of each intake load, default 5), `SEVER_BENCH_ONLY`
//! (scenario numbers to run, comma-separated, e.g. `2,6`; default all), `SEVER_BENCH_LOG`
//! (sever's log filter, default `error`; its log goes to stderr).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use comfy_table::Table;
use pg::TestPostgres;
use serde_json::{Value, json};
use sever_testkit::{pg, proxy};
use sqlx::{Connection, PgConnection, Row};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ADMIN_PASSWORD: &str = "severadminpw";
/// Sessions of other logins that must survive every rotation.
const BYSTANDERS: usize = 50;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median and 95th percentile of a set of durations.
#[derive(Clone, Copy)]
struct Stats {
    median: Duration,
    p95: Duration,
}

impl Stats {
    fn of(samples: &mut [Duration]) -> Self {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self {
            median: at(0.5),
            p95: at(0.95),
        }
    }

    fn show(&self) -> String {
        format!("{} (p95 {})", ms(self.median), ms(self.p95))
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One line of the final table.
struct Line {
    scenario: String,
    sever: String,
    comparison: String,
    ratio: String,
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}

/// A PostgreSQL cluster prepared for sever: more connections, sever's admin login.
async fn cluster() -> TestPostgres {
    let pg = TestPostgres::start();
    pg.exec("ALTER SYSTEM SET max_connections = 1200").await;
    pg.restart();
    pg.exec(&format!(
        "CREATE ROLE sever_admin LOGIN PASSWORD '{ADMIN_PASSWORD}' \
         IN ROLE pg_signal_backend, pg_read_all_stats"
    ))
    .await;
    pg
}

/// Opens `n` sessions as `login`, 50 at a time; they stay open while the Vec lives.
async fn open(pg: &TestPostgres, login: &str, n: usize) -> Vec<PgConnection> {
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        let batch = (n - conns.len()).min(50);
        let opened = futures_util::future::join_all(
            (0..batch).map(|_| pg.session(login, "pw", "postgres", "bench")),
        )
        .await;
        conns.extend(opened.into_iter().map(|(c, _)| c));
    }
    conns
}

async fn count_sessions(admin: &mut PgConnection, login: &str) -> i64 {
    sqlx::query(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE usename = $1 AND backend_type = 'client backend'",
    )
    .bind(login)
    .fetch_one(admin)
    .await
    .unwrap()
    .get("n")
}

/// `sever serve` (the release binary) with a config in its own temp dir.
struct Sever {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
    /// From spawn to `/readyz` answering 200.
    ready_after: Duration,
}

impl Sever {
    async fn start(targets: &str, credentials: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("webhook.secret");
        std::fs::write(&secret, SECRET).unwrap();
        let config = format!(
            "protected_logins = [\"postgres\"]\n\
             [store]\nurl = \"sqlite://{db}?mode=rwc\"\n\
             [webhooks]\nsecrets = [{{ file = {secret:?} }}]\n\
             [server]\nmax_body_bytes = 65536\n\
             {targets}{credentials}",
            db = dir.path().join("sever.db").display(),
        );
        let path = dir.path().join("sever.toml");
        std::fs::write(&path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let child = Command::new(sever_bin())
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
    async fn rotate(&self, credential: &str) -> Duration {
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
    async fn event(&self, body: &Value, wait: bool, secret: &str) -> (u16, Value) {
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
    fn rss_mib(&self) -> (f64, f64) {
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

fn sever_bin() -> PathBuf {
    std::env::var_os("SEVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/sever"))
}

fn target(id: &str, pg: &TestPostgres) -> String {
    target_via(id, pg, pg.port())
}

/// A target on `pg` that sever reaches through `port` (`pg`'s own, or a proxy's).
fn target_via(id: &str, pg: &TestPostgres, port: u16) -> String {
    format!(
        "[targets.{id}]\nengine = \"postgres\"\nurl = {{ file = {:?} }}\npool_size = 4\n",
        url_file(id, pg, port).display().to_string()
    )
}

/// The admin URL of `pg`, reached through `port`, in a file (sever refuses inline passwords).
fn url_file(id: &str, pg: &TestPostgres, port: u16) -> PathBuf {
    let path = pg.base_dir().join(format!("{id}.url"));
    std::fs::write(&path, admin_url(port)).unwrap();
    path
}

/// sever_admin's URL of a cluster reached through `port` (its own, or a proxy's).
fn admin_url(port: u16) -> String {
    format!("postgres://sever_admin:{ADMIN_PASSWORD}@127.0.0.1:{port}/postgres")
}

/// Scenario 1: N sessions of the rotated login plus 50 bystanders; sever vs the floor vs
/// the per-pid script.
async fn rotation_to_clean(runs: usize, lines: &mut Vec<Line>) {
    let pg = cluster().await;
    pg.exec("CREATE ROLE app LOGIN PASSWORD 'pw'; CREATE ROLE other LOGIN PASSWORD 'pw'")
        .await;
    let sever = Sever::start(
        &target("main", &pg),
        "[credentials.orders]\nlogins = [{ target = \"main\", login = \"app\" }]\n",
    )
    .await;
    let _bystanders = open(&pg, "other", BYSTANDERS).await;
    let mut admin = PgConnection::connect(&pg.url("sever_admin", ADMIN_PASSWORD, "postgres"))
        .await
        .unwrap();
    for n in [10usize, 100, 500] {
        let mut with_sever = Vec::new();
        let mut floor = Vec::new();
        let mut script = Vec::new();
        for run in 0..runs {
            // sever: from sending the signed event (?wait=true) to its answer.
            let sessions = open(&pg, "app", n).await;
            with_sever.push(sever.rotate("orders").await);
            assert_eq!(count_sessions(&mut admin, "app").await, 0, "all {n} gone");
            assert_eq!(count_sessions(&mut admin, "other").await, BYSTANDERS as i64);
            drop(sessions);

            // The floor: one set-based statement over an open connection, then the same
            // check sever makes, that they are gone.
            let sessions = open(&pg, "app", n).await;
            let t = Instant::now();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename = 'app' AND backend_type = 'client backend'",
            )
            .execute(&mut admin)
            .await
            .unwrap();
            while count_sessions(&mut admin, "app").await > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            floor.push(t.elapsed());
            drop(sessions);

            // The script people write today: list the pids, one psql per pid. Slow, so
            // fewer runs.
            if run < runs.min(3) {
                let sessions = open(&pg, "app", n).await;
                let t = Instant::now();
                per_pid_script(&pg);
                // The last signal is sent when the script ends; it is done when they are gone.
                while count_sessions(&mut admin, "app").await > 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                script.push(t.elapsed());
                drop(sessions);
            }
        }
        let s = Stats::of(&mut with_sever);
        let f = Stats::of(&mut floor);
        let p = Stats::of(&mut script);
        lines.push(Line {
            scenario: format!("1. rotation-to-clean, N={n} (+{BYSTANDERS} others)"),
            sever: s.show(),
            comparison: format!("floor: {}", f.show()),
            ratio: ratio(s.median, f.median),
        });
        lines.push(Line {
            scenario: format!("1. rotation-to-clean, N={n}"),
            sever: s.show(),
            comparison: format!("per-pid psql script: {}", p.show()),
            ratio: format!(
                "{:.0}x faster",
                p.median.as_secs_f64() / s.median.as_secs_f64()
            ),
        });
    }
}

fn psql(pg: &TestPostgres, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "sever_admin",
        ])
        .args(["-d", "postgres", "-At", "-c", sql])
        .env("PGPASSWORD", ADMIN_PASSWORD)
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn per_pid_script(pg: &TestPostgres) {
    let pids = psql(
        pg,
        "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'",
    );
    for pid in pids.lines().filter(|l| !l.is_empty()) {
        psql(pg, &format!("SELECT pg_terminate_backend({pid})"));
    }
}

/// Where scenario 2's targets are and how many sessions each has.
#[derive(Clone, Copy)]
struct FanOut {
    /// Sessions of the rotated login on each target.
    per_target: usize,
    /// Added to every packet in each direction between sever (or the floor's client) and
    /// the targets, by a proxy in front of each cluster; `None`: connected directly.
    delay: Option<Duration>,
}

impl FanOut {
    fn label(&self) -> String {
        match self.delay {
            None => format!("{} sessions", self.per_target),
            Some(d) => format!("{} session(s), {} ms away", self.per_target, d.as_millis()),
        }
    }
}

/// Scenario 2: one rotation mapped to 1, 4 and 16 targets (4 clusters, a login per target),
/// against the floor: the set-based statement on every target at once, each over an open
/// connection, until every target is clean.
async fn fan_out(clusters: &[TestPostgres], shape: FanOut, runs: usize, lines: &mut Vec<Line>) {
    // Each target's connections go through a proxy of its own when it is "away".
    let mut ports = Vec::new();
    for j in 0..16 {
        let pg = &clusters[j % 4];
        ports.push(match shape.delay {
            None => pg.port(),
            Some(delay) => delaying_proxy(pg.port(), delay).await.0,
        });
    }
    let mut targets = String::new();
    let mut credentials = String::new();
    for (j, port) in ports.iter().enumerate() {
        targets.push_str(&target_via(&format!("t{j}"), &clusters[j % 4], *port));
    }
    for k in [1usize, 4, 16] {
        let logins: Vec<String> = (0..k)
            .map(|j| format!("{{ target = \"t{j}\", login = \"app{j}\" }}"))
            .collect();
        credentials.push_str(&format!(
            "[credentials.fan{k}]\nlogins = [{}]\n",
            logins.join(", ")
        ));
    }
    let sever = Sever::start(&targets, &credentials).await;
    // The floor's open connections: one per target, as sever keeps a warm one per target.
    let mut admins = Vec::new();
    for port in &ports {
        admins.push(PgConnection::connect(&admin_url(*port)).await.unwrap());
    }
    // Checks go directly to the clusters, so they cost the figures nothing.
    let mut checks = Vec::new();
    for pg in clusters {
        checks.push(PgConnection::connect(&admin_url(pg.port())).await.unwrap());
    }
    let mut one = (Duration::ZERO, Duration::ZERO);
    for k in [1usize, 4, 16] {
        let mut samples = Vec::new();
        let mut floor = Vec::new();
        for _ in 0..runs {
            let sessions = open_per_target(clusters, k, shape.per_target).await;
            samples.push(sever.rotate(&format!("fan{k}")).await);
            for j in 0..k {
                assert_eq!(
                    count_sessions(&mut checks[j % 4], &format!("app{j}")).await,
                    0
                );
            }
            drop(sessions);

            let sessions = open_per_target(clusters, k, shape.per_target).await;
            let t = Instant::now();
            futures_util::future::join_all(admins.iter_mut().take(k).enumerate().map(
                |(j, admin)| async move {
                    let login = format!("app{j}");
                    sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE usename = $1 AND backend_type = 'client backend'",
                    )
                    .bind(&login)
                    .execute(&mut *admin)
                    .await
                    .unwrap();
                    while count_sessions(admin, &login).await > 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                },
            ))
            .await;
            floor.push(t.elapsed());
            drop(sessions);
        }
        let s = Stats::of(&mut samples);
        let f = Stats::of(&mut floor);
        if k == 1 {
            one = (s.median, f.median);
        }
        lines.push(Line {
            scenario: format!("2. fan-out, {k} target(s) x {}", shape.label()),
            sever: s.show(),
            comparison: format!("floor: {}", f.show()),
            ratio: ratio(s.median, f.median),
        });
        if k > 1 {
            lines.push(Line {
                scenario: format!("2. fan-out, {k} targets against 1 ({})", shape.label()),
                sever: format!("{} of 1 target", ratio(s.median, one.0)),
                comparison: format!("floor: {} of 1 target", ratio(f.median, one.1)),
                ratio: "-".into(),
            });
        }
    }
}

/// Scenario 6: rotation-to-clean on one target 2 ms away (1 ms each way through a delaying
/// proxy), N = 10, 100 and 500 sessions plus the bystanders that must survive, against the
/// floor through the same proxy: the set-based statement over an open connection, then polls
/// until the sessions are gone. Beside each figure, the round trips the proxy counted.
async fn at_a_distance(runs: usize, lines: &mut Vec<Line>) {
    let pg = cluster().await;
    pg.exec("CREATE ROLE app LOGIN PASSWORD 'pw'; CREATE ROLE other LOGIN PASSWORD 'pw'")
        .await;
    let (port, traffic) = delaying_proxy(pg.port(), Duration::from_millis(1)).await;
    let sever = Sever::start(
        &target_via("main", &pg, port),
        "[credentials.orders]\nlogins = [{ target = \"main\", login = \"app\" }]\n",
    )
    .await;
    let _bystanders = open(&pg, "other", BYSTANDERS).await;
    // The floor's client, through the proxy; the checks go directly and cost nothing.
    let mut remote = PgConnection::connect(&admin_url(port)).await.unwrap();
    let mut check = PgConnection::connect(&admin_url(pg.port())).await.unwrap();
    for n in [10usize, 100, 500] {
        let (mut with_sever, mut floor) = (Vec::new(), Vec::new());
        let (mut sever_rt, mut floor_rt) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let sessions = open(&pg, "app", n).await;
            let before = traffic.snapshot();
            with_sever.push(sever.rotate("orders").await);
            sever_rt.push(traffic.since(&before));
            assert_eq!(count_sessions(&mut check, "app").await, 0, "all {n} gone");
            assert_eq!(count_sessions(&mut check, "other").await, BYSTANDERS as i64);
            drop(sessions);

            let sessions = open(&pg, "app", n).await;
            let before = traffic.snapshot();
            let t = Instant::now();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename = 'app' AND backend_type = 'client backend'",
            )
            .execute(&mut remote)
            .await
            .unwrap();
            while count_sessions(&mut remote, "app").await > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            floor.push(t.elapsed());
            floor_rt.push(traffic.since(&before));
            drop(sessions);
        }
        let s = Stats::of(&mut with_sever);
        let f = Stats::of(&mut floor);
        let (srt, frt) = (median_rt(&mut sever_rt), median_rt(&mut floor_rt));
        lines.push(Line {
            scenario: format!("6. one target 2 ms away, N={n} (+{BYSTANDERS} others)"),
            sever: format!("{}; {}", s.show(), srt.show()),
            comparison: format!("floor: {}; {}", f.show(), frt.show()),
            ratio: format!(
                "{}, {:+} RT",
                ratio(s.median, f.median),
                srt.max as i64 - frt.max as i64
            ),
        });
    }
    lines.push(Line {
        scenario: "6. the proxy's real delay per hop (asked: 1 ms)".into(),
        sever: ms(traffic.mean_hop()),
        comparison: format!("one round trip: {}", ms(2 * traffic.mean_hop())),
        ratio: "-".into(),
    });
}

/// The run with the median critical-path round trips (`max`).
fn median_rt(samples: &mut [RoundTrips]) -> RoundTrips {
    samples.sort_by_key(|r| r.max);
    let m = &samples[samples.len() / 2];
    RoundTrips {
        max: m.max,
        total: m.total,
        connections: m.connections,
    }
}

/// What a delaying proxy saw: the request/response exchanges on each connection it carried,
/// and the delay it really added per hop (Tokio's timer rounds a sleep up to the next
/// millisecond tick, so a 1 ms hop costs more than 1 ms).
#[derive(Default)]
struct Traffic {
    /// One counter per connection, in accept order: the client's turns, i.e. the times the
    /// client sent bytes after the server had (or first). Back-to-back chunks of one request,
    /// or requests pipelined before reading, are one exchange: one wait for the network.
    turns: Mutex<Vec<Arc<AtomicU64>>>,
    /// Sum of the delays added, in nanoseconds, and how many hops they were.
    delay_nanos: AtomicU64,
    hops: AtomicU64,
}

/// Round trips between two snapshots of a proxy's [`Traffic`].
struct RoundTrips {
    /// Exchanges on the connection that had the most: the round trips on the critical path
    /// when one connection carries the work.
    max: u64,
    /// Exchanges on all connections together.
    total: u64,
    /// Connections that carried any.
    connections: usize,
}

impl RoundTrips {
    fn show(&self) -> String {
        format!(
            "{} RT ({} over {} conn)",
            self.max, self.total, self.connections
        )
    }
}

impl Traffic {
    fn snapshot(&self) -> Vec<u64> {
        let turns = self.turns.lock().unwrap();
        turns.iter().map(|t| t.load(Ordering::Relaxed)).collect()
    }

    /// The exchanges since `before` (a [`Self::snapshot`]); new connections count from zero.
    fn since(&self, before: &[u64]) -> RoundTrips {
        let now = self.snapshot();
        let diffs: Vec<u64> = now
            .iter()
            .enumerate()
            .map(|(i, n)| n - before.get(i).copied().unwrap_or(0))
            .collect();
        RoundTrips {
            max: diffs.iter().copied().max().unwrap_or(0),
            total: diffs.iter().sum(),
            connections: diffs.iter().filter(|d| **d > 0).count(),
        }
    }

    /// The mean delay the proxy really added per hop (one direction).
    fn mean_hop(&self) -> Duration {
        let hops = self.hops.load(Ordering::Relaxed).max(1);
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed) / hops)
    }
}

/// Which way a connection's bytes last went.
const TO_SERVER: u8 = 1;
const TO_CLIENT: u8 = 2;

/// A TCP proxy to `upstream` (a port on 127.0.0.1) that holds every chunk of bytes for
/// `delay` in each direction, as a network between sever and a database host would, and
/// counts the exchanges on each connection ([`Traffic`]). Returns its port; it serves until
/// the benchmark exits. Written here because the kernel on these machines has no netem qdisc
/// to delay loopback traffic with.
async fn delaying_proxy(upstream: u16, delay: Duration) -> (u16, Arc<Traffic>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let traffic = Arc::new(Traffic::default());
    let seen = traffic.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let turns = Arc::new(AtomicU64::new(0));
            seen.turns.lock().unwrap().push(turns.clone());
            let traffic = seen.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let last = Arc::new(AtomicU8::new(0));
                let to_server = Direction {
                    to: TO_SERVER,
                    last: last.clone(),
                    turns: Some(turns),
                };
                let to_client = Direction {
                    to: TO_CLIENT,
                    last,
                    turns: None,
                };
                tokio::join!(
                    delayed_copy(client_read, server_write, delay, to_server, &traffic),
                    delayed_copy(server_read, client_write, delay, to_client, &traffic),
                );
            });
        }
    });
    (port, traffic)
}

/// One direction of a proxied connection, for counting exchanges.
struct Direction {
    to: u8,
    /// Shared by both directions of the connection.
    last: Arc<AtomicU8>,
    /// Counted on the client-to-server side only.
    turns: Option<Arc<AtomicU64>>,
}

/// Copies `from` to `to`, each chunk written `delay` after it was read, in order.
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    direction: Direction,
    traffic: &Traffic,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let before = direction.last.swap(direction.to, Ordering::Relaxed);
            if let Some(turns) = &direction.turns
                && before != direction.to
            {
                turns.fetch_add(1, Ordering::Relaxed);
            }
            if tx
                .send((tokio::time::Instant::now(), buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((read_at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(read_at + delay).await;
            let held = read_at.elapsed();
            traffic
                .delay_nanos
                .fetch_add(held.as_nanos() as u64, Ordering::Relaxed);
            traffic.hops.fetch_add(1, Ordering::Relaxed);
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// Opens `per_target` sessions of each of the first `k` targets' logins, on their clusters.
async fn open_per_target(
    clusters: &[TestPostgres],
    k: usize,
    per_target: usize,
) -> Vec<PgConnection> {
    let mut sessions = Vec::new();
    for j in 0..k {
        sessions.extend(open(&clusters[j % 4], &format!("app{j}"), per_target).await);
    }
    sessions
}

/// Scenario 5: rotation-to-clean of 100 sessions on a healthy target, with 300 steps queued
/// for a second target that stopped answering (a real proxy in front of it that accepts and
/// then forwards nothing, closing nothing), next to the same rotation with none queued.
async fn one_stalled_target(runs: usize, lines: &mut Vec<Line>) {
    let pg = cluster().await;
    pg.exec("CREATE ROLE app LOGIN PASSWORD 'pw'; CREATE ROLE gone LOGIN PASSWORD 'pw'")
        .await;
    let stalling = proxy::StallingProxy::start(pg.port()).await;
    let sever = Sever::start(
        &format!(
            "{}{}",
            target("main", &pg),
            target_via("stalled", &pg, stalling.port)
        ),
        "[credentials.orders]\nlogins = [{ target = \"main\", login = \"app\" }]\n\
         [credentials.lost]\nlogins = [{ target = \"stalled\", login = \"gone\" }]\n",
    )
    .await;
    let mut admin = PgConnection::connect(&pg.url("sever_admin", ADMIN_PASSWORD, "postgres"))
        .await
        .unwrap();
    let mut rotate = async |runs: usize| {
        let mut samples = Vec::new();
        for _ in 0..runs {
            let sessions = open(&pg, "app", 100).await;
            samples.push(sever.rotate("orders").await);
            assert_eq!(count_sessions(&mut admin, "app").await, 0, "all 100 gone");
            drop(sessions);
        }
        Stats::of(&mut samples)
    };
    let clear = rotate(runs).await;
    stalling.stall();
    for _ in 0..300 {
        let (status, body) = sever
            .event(
                &json!({"credential": "lost", "kind": "revoked"}),
                false,
                SECRET,
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let stalled = rotate(runs).await;
    lines.push(Line {
        scenario: "5. one stalled target: rotation-to-clean, N=100, 300 steps queued for it".into(),
        sever: stalled.show(),
        comparison: format!("none queued: {}", clear.show()),
        ratio: ratio(stalled.median, clear.median),
    });
}

/// Scenario 3 and 4: sustained signed events (accepted and audited), signature rejections,
/// and the footprint of the process serving them.
async fn intake_and_footprint(secs: u64, lines: &mut Vec<Line>) {
    let pg = cluster().await;
    let sever = Sever::start(
        &target("main", &pg),
        // A credential whose policy terminates nothing: each event is verified,
        // de-duplicated, stored with its plan and audited, and touches no database.
        "[credentials.noop]\npolicy = \"none\"\nlogins = [{ target = \"main\", login = \"app\" }]\n",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, _) = sever.rss_mib();
    let ready = sever.ready_after;
    let sever = Arc::new(sever);
    for (label, secret, expect) in [
        ("3. intake: signed events accepted", SECRET, 202u16),
        (
            "3. intake: bad signatures rejected",
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            401,
        ),
    ] {
        let (rate, mut latencies, wrong) = load(&sever, secret, expect, secs).await;
        let l = Stats::of(&mut latencies);
        let p99 = latencies[((latencies.len() - 1) as f64 * 0.99) as usize];
        lines.push(Line {
            scenario: label.into(),
            sever: format!("{rate:.0}/s, p50 {}, p99 {}", ms(l.median), ms(p99)),
            comparison: if wrong > 0 {
                format!("{wrong} unexpected answers")
            } else {
                "-".into()
            },
            ratio: "-".into(),
        });
    }
    let (now, peak) = sever.rss_mib();
    let size = std::fs::metadata(sever_bin()).map(|m| m.len()).unwrap_or(0);
    lines.push(Line {
        scenario: "4. footprint".into(),
        sever: format!(
            "idle RSS {idle:.1} MiB; under load {now:.1} MiB (peak {peak:.1}); ready in {}; binary {:.1} MiB",
            ms(ready),
            size as f64 / 1048576.0
        ),
        comparison: "-".into(),
        ratio: "-".into(),
    });
}

/// Sends events from 64 concurrent clients for `secs`; rate, latencies, wrong answers.
async fn load(
    sever: &Arc<Sever>,
    secret: &'static str,
    expect: u16,
    secs: u64,
) -> (f64, Vec<Duration>, usize) {
    let stop = Instant::now() + Duration::from_secs(secs);
    let wrong = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..64).map(|_| {
        let sever = sever.clone();
        let wrong = wrong.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let (status, _) = sever
                    .event(
                        &json!({"credential": "noop", "kind": "rotated"}),
                        false,
                        secret,
                    )
                    .await;
                latencies.push(t.elapsed());
                if status != expect {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        })
    });
    let mut latencies = Vec::new();
    for w in futures_util::future::join_all(workers).await {
        latencies.extend(w.unwrap());
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    (rate, latencies, wrong.load(Ordering::Relaxed))
}

fn main() {
    // `cargo test --all-targets` builds and runs bench targets too, without `--bench`: the
    // benchmarks need the release binary and minutes, so they only run under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmarks run with scripts/bench.sh (cargo bench); nothing to test here");
        return;
    }
    let runs = env_usize("SEVER_BENCH_RUNS", 7);
    let secs = env_usize("SEVER_BENCH_INTAKE_SECS", 5) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::var("SEVER_BENCH_ONLY").unwrap_or_default();
    let wanted = |n: &str| only.is_empty() || only.split(',').any(|s| s.trim() == n);
    let lines = runtime.block_on(async {
        let mut lines = Vec::new();
        if wanted("1") {
            rotation_to_clean(runs, &mut lines).await;
        }
        if wanted("2") {
            let clusters = futures_util::future::join_all((0..4).map(|_| cluster())).await;
            for (j, pg) in (0..16).map(|j| (j, &clusters[j % 4])) {
                pg.exec(&format!("CREATE ROLE app{j} LOGIN PASSWORD 'pw'"))
                    .await;
            }
            // On this machine every cluster shares the same 2 cores, so ending 16 x 20
            // backends costs 16 times the CPU of 20 whoever signals them; with one session
            // per target 1 ms away, the time is mostly network, as with databases on
            // hosts of their own, and the growth shows what sever adds per target.
            for shape in [
                FanOut {
                    per_target: 20,
                    delay: None,
                },
                FanOut {
                    per_target: 1,
                    delay: Some(Duration::from_millis(1)),
                },
            ] {
                fan_out(&clusters, shape, runs, &mut lines).await;
            }
        }
        if wanted("3") || wanted("4") {
            intake_and_footprint(secs, &mut lines).await;
        }
        if wanted("5") {
            one_stalled_target(runs, &mut lines).await;
        }
        if wanted("6") {
            at_a_distance(runs, &mut lines).await;
        }
        lines
    });
    let mut table = Table::new();
    table.set_header(["scenario", "sever (median, p95)", "comparison", "ratio"]);
    for l in lines {
        table.add_row([l.scenario, l.sever, l.comparison, l.ratio]);
    }
    println!("{table}");
    println!("runs per figure: {runs}; intake load: {secs} s per line, 64 clients");
}
