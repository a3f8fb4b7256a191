//! A throwaway PostgreSQL server for integration tests.
//!
//! Each [`TestPostgres`] runs its own `postgres` (from `initdb`/`pg_ctl` on PATH)
//! on a free 127.0.0.1 port with its data, socket directory and log in a fresh
//! directory under `/tmp`. It never touches the system server on 5432.
//!
//! `initdb` refuses to run as root, so when we are root (as on the dev/CI
//! machines) every server command runs as the `postgres` OS user via
//! `runuser -u postgres --`, and the files it needs are chowned to that user.
//!
//! `start`, `stop`, `restart` and `Drop` block (they run `pg_ctl`); calling them
//! from a `#[tokio::test]` is fine.

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{AssertSqlSafe, Connection};

use crate::util::{describe, encode, free_port};

/// How long a start may take before we give up and panic with the log.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The OS user the server runs as when we are root.
const PG_OS_USER: &str = "postgres";

pub struct TestPostgres {
    /// Base temp dir: holds `data/`, `sock/` and `postgres.log`. Removed on drop.
    base: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    port: AtomicU16,
    running: AtomicBool,
    as_root: bool,
}

impl TestPostgres {
    /// initdb (--no-sync, -U postgres, --auth-local=trust) into a temp dir, start on a
    /// free 127.0.0.1 port, wait until it accepts connections (bounded ~15 s, then
    /// panic with the server log contents).
    pub fn start() -> TestPostgres {
        let as_root = running_as_root();
        let base = make_base_dir();
        let pg = TestPostgres {
            data: base.join("data"),
            sock: base.join("sock"),
            log: base.join("postgres.log"),
            base,
            port: AtomicU16::new(0),
            running: AtomicBool::new(false),
            as_root,
        };
        // From here on, a panic drops `pg`, which cleans the temp dir up.
        pg.prepare_dirs();
        pg.initdb();
        pg.write_hba();
        fs::OpenOptions::new()
            .append(true)
            .open(pg.data.join("postgresql.conf"))
            .and_then(|mut f| {
                use std::io::Write;
                writeln!(f, "\ninclude 'sever_test.conf'")
            })
            .expect("append include to postgresql.conf");

        // The free port is found by binding to :0 and dropping the listener, which
        // can race with another process; try once more on a fresh port.
        let mut last_err = String::new();
        for _attempt in 0..2 {
            let port = free_port();
            pg.port.store(port, Ordering::SeqCst);
            pg.write_conf(port);
            match pg.try_start() {
                Ok(()) => return pg,
                Err(e) => last_err = e,
            }
        }
        panic!(
            "test postgres failed to start twice: {last_err}\n--- server log ({}) ---\n{}",
            pg.log.display(),
            pg.log_contents()
        );
    }

    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// Turns on TLS with a server certificate for 127.0.0.1 issued by a fresh test CA, and
    /// restarts the server. Returns the CA certificate's path (for `sslrootcert`).
    pub fn enable_tls(&self) -> PathBuf {
        let ca_key = self.base.join("ca.key");
        let ca = self.base.join("ca.crt");
        let key = self.data.join("server.key");
        let csr = self.base.join("server.csr");
        let crt = self.data.join("server.crt");
        let ext = self.base.join("server.ext");
        fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        let p = |path: &Path| path.to_str().expect("utf-8 temp path").to_owned();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", describe(&out));
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    &p(&ca_key),
                    "-out",
                    &p(&ca),
                    "-days",
                    "2",
                    "-subj",
                    "/CN=sever test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &p(&key),
                    "-out",
                    &p(&csr),
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-out",
            &p(&crt),
            "-days",
            "2",
            "-extfile",
            &p(&ext),
        ]);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        if self.as_root {
            chown_to_pg(&[&key, &crt]);
        }
        fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .and_then(|mut f| {
                use std::io::Write;
                writeln!(
                    f,
                    "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
                )
            })
            .expect("append ssl settings");
        self.restart();
        ca
    }

    /// The temp directory holding data, socket dir and log; removed on drop.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// The server log so far (for diagnostics).
    pub fn log_contents(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<could not read log: {e}>"))
    }

    /// URL for the superuser over TCP: postgres://postgres@127.0.0.1:{port}/{db}
    pub fn superuser_url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.port(),
            encode(db)
        )
    }

    /// URL for a login with password over TCP:
    /// postgres://{login}:{password}@127.0.0.1:{port}/{db}
    pub fn url(&self, login: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            encode(login),
            encode(password),
            self.port(),
            encode(db)
        )
    }

    /// Stop the server (pg_ctl stop -m fast). Idempotent.
    pub fn stop(&self) {
        if !self.running.swap(false, Ordering::SeqCst) {
            return;
        }
        let out = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"]);
        if !out.status.success() {
            panic!(
                "pg_ctl stop failed: {}\n--- server log ---\n{}",
                describe(&out),
                self.log_contents()
            );
        }
    }

    /// Start it again on the same port after stop(). If it is still running it is
    /// stopped first.
    pub fn restart(&self) {
        self.stop();
        if let Err(e) = self.try_start() {
            panic!(
                "test postgres failed to restart on port {}: {e}\n--- server log ---\n{}",
                self.port(),
                self.log_contents()
            );
        }
    }

    /// Runs SQL statements as the superuser on database `postgres`.
    pub async fn exec(&self, sql: &str) {
        let mut conn = self.superuser_conn().await;
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
        {
            panic!("test postgres exec failed: {e}\nSQL: {sql}");
        }
        let _ = conn.close().await;
    }

    /// Opens a real session as `login` over TCP, with `application_name` set unless
    /// it is empty; returns the connection and its backend pid.
    pub async fn session(
        &self,
        login: &str,
        password: &str,
        db: &str,
        application_name: &str,
    ) -> (PgConnection, i32) {
        let mut opts = self.connect_options(login, db).password(password);
        if !application_name.is_empty() {
            opts = opts.application_name(application_name);
        }
        let mut conn = PgConnection::connect_with(&opts)
            .await
            .unwrap_or_else(|e| panic!("session as {login} on {db} failed: {e}"));
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .expect("SELECT pg_backend_pid()");
        (conn, pid)
    }

    /// Creates a login role with a password: CREATE ROLE {login} LOGIN PASSWORD '{password}'.
    /// Names are test-controlled identifiers; the password may not contain `'`.
    pub async fn create_login(&self, login: &str, password: &str) {
        assert!(
            !password.contains('\''),
            "test passwords must not contain quotes"
        );
        self.exec(&format!("CREATE ROLE {login} LOGIN PASSWORD '{password}'"))
            .await;
    }

    /// Opens `n` real sessions as `login` on `postgres` (application `orders-api`) that stay
    /// connected for the rest of the test (or until terminated); returns their pids.
    pub async fn open_sessions(&self, login: &str, password: &str, n: usize) -> Vec<i32> {
        let mut pids = Vec::new();
        for _ in 0..n {
            let (conn, pid) = self
                .session(login, password, "postgres", "orders-api")
                .await;
            // Deliberately leaked: the session must outlive this call.
            std::mem::forget(conn);
            pids.push(pid);
        }
        pids
    }

    /// True if a backend with this pid is still in pg_stat_activity.
    pub async fn is_alive(&self, pid: i32) -> bool {
        let mut conn = self.superuser_conn().await;
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid)
                .fetch_one(&mut conn)
                .await
                .expect("query pg_stat_activity");
        let _ = conn.close().await;
        alive
    }

    /// Polls [`is_alive`](Self::is_alive) until the backend is gone or `timeout`
    /// passes; returns true if it went away. A terminated backend leaves
    /// pg_stat_activity asynchronously, so use this after a termination.
    pub async fn wait_gone(&self, pid: i32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_alive(pid).await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    // ----- internals -----

    fn connect_options(&self, user: &str, db: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(self.port())
            .username(user)
            .database(db)
            .ssl_mode(PgSslMode::Disable)
    }

    async fn superuser_conn(&self) -> PgConnection {
        PgConnection::connect_with(&self.connect_options("postgres", "postgres"))
            .await
            .unwrap_or_else(|e| panic!("superuser connect to test postgres failed: {e}"))
    }

    fn prepare_dirs(&self) {
        fs::create_dir(&self.data).expect("create data dir");
        fs::set_permissions(&self.data, fs::Permissions::from_mode(0o700)).expect("chmod data");
        fs::create_dir(&self.sock).expect("create socket dir");
        fs::set_permissions(&self.sock, fs::Permissions::from_mode(0o755)).expect("chmod sock");
        fs::write(&self.log, b"").expect("create log file");
        if self.as_root {
            chown_to_pg(&[&self.data, &self.sock, &self.log]);
        }
    }

    fn initdb(&self) {
        let data = self.data.to_str().expect("utf-8 temp path");
        let out = self.run(
            "initdb",
            &[
                "--no-sync",
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "-D",
                data,
            ],
        );
        if !out.status.success() {
            panic!("initdb failed: {}", describe(&out));
        }
    }

    fn write_hba(&self) {
        let hba = "\
# written by tests/kit/src/pg.rs
local all all                trust
host  all postgres 127.0.0.1/32 trust
host  all all      127.0.0.1/32 scram-sha-256
";
        self.write_pg_file("pg_hba.conf", hba);
    }

    fn write_conf(&self, port: u16) {
        let conf = format!(
            "# written by tests/kit/src/pg.rs\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{}'\n\
             max_connections = 200\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 16MB\n",
            self.sock.display()
        );
        self.write_pg_file("sever_test.conf", &conf);
    }

    fn write_pg_file(&self, name: &str, contents: &str) {
        let path = self.data.join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        if self.as_root {
            chown_to_pg(&[&path]);
        }
    }

    /// `pg_ctl -w start` and wait until the TCP port answers; Err(reason) otherwise.
    fn try_start(&self) -> Result<(), String> {
        let log = self.log.to_str().expect("utf-8 temp path");
        let timeout = START_TIMEOUT.as_secs().to_string();
        let out = self.pg_ctl(&["-w", "-t", &timeout, "-l", log, "start"]);
        if !out.status.success() {
            // pg_ctl may have left a half-started postmaster behind; make sure it is gone.
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "10"]);
            return Err(format!("pg_ctl start: {}", describe(&out)));
        }
        self.running.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.accepting() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.running.store(false, Ordering::SeqCst);
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "10"]);
        Err(format!(
            "not accepting connections on 127.0.0.1:{} after {START_TIMEOUT:?}",
            self.port()
        ))
    }

    /// pg_isready against the TCP port, falling back to a plain TCP connect when
    /// pg_isready is not installed.
    fn accepting(&self) -> bool {
        let port = self.port().to_string();
        match Command::new("pg_isready")
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) => status.success(),
            Err(_) => TcpStream::connect(("127.0.0.1", self.port())).is_ok(),
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data.to_str().expect("utf-8 temp path");
        let mut all = vec!["-D", data];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    /// Runs a PostgreSQL binary, as the postgres OS user when we are root.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_OS_USER, "--", program]);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args)
            .current_dir(&self.base)
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            // With `-l`, pg_ctl starts the postmaster with stdin/stdout/stderr
            // redirected to /dev/null and the log, so capturing output here does
            // not wait on the long-lived server.
            .stdin(Stdio::null());
        cmd.output()
            .unwrap_or_else(|e| panic!("could not run {program} (is PostgreSQL on PATH?): {e}"))
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.running.swap(false, Ordering::SeqCst) {
            let data = self.data.to_str().unwrap_or_default();
            let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run(
                    "pg_ctl",
                    &["-D", data, "stop", "-m", "immediate", "-w", "-t", "10"],
                )
                .status
                .success()
            }))
            .unwrap_or(false);
            if !stopped {
                // Last resort: SIGQUIT (immediate shutdown) to the postmaster.
                if let Ok(pidfile) = fs::read_to_string(self.data.join("postmaster.pid"))
                    && let Some(pid) = pidfile.lines().next().map(str::trim)
                {
                    let _ = Command::new("kill")
                        .args(["-QUIT", pid])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A fresh directory under /tmp, mode 0755 so the postgres user can traverse it.
fn make_base_dir() -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("sever-pg-")
        .tempdir_in("/tmp")
        .expect("create temp dir under /tmp")
        .keep();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    dir
}

fn chown_to_pg(paths: &[&Path]) {
    let out = Command::new("chown")
        .arg(format!("{PG_OS_USER}:{PG_OS_USER}"))
        .args(paths)
        .output()
        .expect("run chown");
    assert!(out.status.success(), "chown failed: {}", describe(&out));
}
