//! A throwaway MariaDB server for integration tests.
//!
//! Each [`TestMariaDb`] runs its own `mariadbd` (bootstrapped with
//! `mariadb-install-db`, both on PATH) on a free 127.0.0.1 port with its data
//! dir, socket, pid file and error log in a fresh directory under `/tmp`. It
//! never touches the system server on 3306: every command gets `--no-defaults`,
//! so no `my.cnf` is read.
//!
//! The server is a plain child process (not daemonized); we keep its
//! [`Child`] and stop it with SIGTERM. `root` has an empty password and the
//! `normal` (mysql_native_password) authentication, so `mysql://root@127.0.0.1:PORT/`
//! works over TCP.
//!
//! `start`, `restart` and `Drop` block; calling them from a `#[tokio::test]` is
//! fine (the readiness login runs on its own thread with its own runtime).

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlSslMode};
use sqlx::{AssertSqlSafe, Connection};

use crate::util::{describe, encode, free_port};

/// How long a start may take before we give up and panic with the log.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a SIGTERM shutdown may take in `restart` before we SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `Drop` waits after SIGTERM before SIGKILL.
const DROP_STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct TestMariaDb {
    /// Base temp dir: holds `data/`, `mariadbd.sock`, `mariadbd.pid` and `mariadbd.log`.
    /// Removed on drop.
    base: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    port: AtomicU16,
    /// Extra `mariadbd` arguments given to [`start_with_args`](Self::start_with_args).
    extra_args: Vec<String>,
    child: Mutex<Option<Child>>,
}

impl TestMariaDb {
    /// mariadb-install-db into a temp dir, start `mariadbd` on a free 127.0.0.1 port,
    /// wait until root can log in over TCP (bounded 20 s, then panic with the server log).
    pub fn start() -> TestMariaDb {
        Self::start_with_args(&[])
    }

    /// Like [`start`](Self::start), with extra `mariadbd` options appended to the
    /// command line (e.g. `--skip-name-resolve`). They are kept for `restart`.
    pub fn start_with_args(extra_args: &[&str]) -> TestMariaDb {
        let base = make_base_dir();
        let db = TestMariaDb {
            data: base.join("data"),
            sock: base.join("mariadbd.sock"),
            pid_file: base.join("mariadbd.pid"),
            log: base.join("mariadbd.log"),
            base,
            port: AtomicU16::new(0),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            child: Mutex::new(None),
        };
        // From here on, a panic drops `db`, which stops the server and cleans up.
        db.install_db();

        // The free port is found by binding to :0 and dropping the listener, which
        // can race with another process; try once more on a fresh port.
        let mut last_err = String::new();
        for _attempt in 0..2 {
            db.port.store(free_port(), Ordering::SeqCst);
            let mut child = db.lock_child();
            match db.try_start(&mut child) {
                Ok(()) => {
                    drop(child);
                    return db;
                }
                Err(e) => last_err = e,
            }
        }
        panic!(
            "test mariadb failed to start twice: {last_err}\n--- server log ({}) ---\n{}",
            db.log.display(),
            db.log_contents()
        );
    }

    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// The temp directory holding data dir, socket, pid file and log; removed on drop.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// The server's unix socket (root can log in there without a password too).
    pub fn socket_path(&self) -> &Path {
        &self.sock
    }

    /// mysql://root@127.0.0.1:PORT/
    pub fn root_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/", self.port())
    }

    /// mysql://USER:PASSWORD@127.0.0.1:PORT/ (user and password percent-encoded).
    pub fn url(&self, user: &str, password: &str) -> String {
        format!(
            "mysql://{}:{}@127.0.0.1:{}/",
            encode(user),
            encode(password),
            self.port()
        )
    }

    /// Connect options for `user` over TCP 127.0.0.1 without TLS (no password set).
    pub fn connect_options(&self, user: &str) -> MySqlConnectOptions {
        MySqlConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port())
            .username(user)
            .ssl_mode(MySqlSslMode::Disabled)
    }

    /// A fresh root connection over TCP.
    pub async fn root_connection(&self) -> MySqlConnection {
        MySqlConnection::connect_with(&self.connect_options("root"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "root connect to test mariadb on port {} failed: {e}",
                    self.port()
                )
            })
    }

    /// Runs SQL as root (multi-statement text is fine).
    pub async fn exec(&self, sql: &str) {
        let mut conn = self.root_connection().await;
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
        {
            panic!("test mariadb exec failed: {e}\nSQL: {sql}");
        }
        let _ = conn.close().await;
    }

    /// CREATE USER 'user'@'host' IDENTIFIED BY 'password' (host e.g. '%', '127.0.0.1',
    /// 'localhost'). Names are test-controlled; none may contain `'` or `\`.
    pub async fn create_account(&self, user: &str, host: &str, password: &str) {
        for (what, s) in [("user", user), ("host", host), ("password", password)] {
            assert!(
                !s.contains(['\'', '\\']),
                "test {what} must not contain quotes or backslashes: {s:?}"
            );
        }
        self.exec(&format!(
            "CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}'"
        ))
        .await;
    }

    /// Opens a real session as user/password over TCP 127.0.0.1, returns it and its
    /// CONNECTION_ID(); the error if the server refuses it.
    pub async fn try_session(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(MySqlConnection, u64), sqlx::Error> {
        let opts = self.connect_options(user).password(password);
        let mut conn = MySqlConnection::connect_with(&opts).await?;
        let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut conn)
            .await?;
        Ok((conn, id))
    }

    /// Opens a real session as user/password over TCP 127.0.0.1 (so it authenticates as
    /// the most specific matching account, e.g. 'app'@'127.0.0.1' beats 'app'@'%');
    /// returns the connection and its CONNECTION_ID(). Panics if refused.
    pub async fn session(&self, user: &str, password: &str) -> (MySqlConnection, u64) {
        self.try_session(user, password)
            .await
            .unwrap_or_else(|e| panic!("session as {user} on test mariadb failed: {e}"))
    }

    /// Opens `n` sessions that stay connected for the rest of the test (or until
    /// killed); returns their connection ids.
    pub async fn open_sessions(&self, user: &str, password: &str, n: usize) -> Vec<u64> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let (conn, id) = self.session(user, password).await;
            // Deliberately leaked: the session must outlive this call.
            std::mem::forget(conn);
            ids.push(id);
        }
        ids
    }

    /// True if a connection with this id is in information_schema.PROCESSLIST.
    pub async fn is_alive(&self, id: u64) -> bool {
        let mut conn = self.root_connection().await;
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?")
                .bind(id)
                .fetch_one(&mut conn)
                .await
                .expect("query information_schema.PROCESSLIST");
        let _ = conn.close().await;
        n > 0
    }

    /// Polls [`is_alive`](Self::is_alive) until the connection is gone or `timeout`
    /// passes; returns true if it went away. A killed connection leaves the
    /// processlist asynchronously, so use this after a KILL.
    pub async fn wait_gone(&self, id: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_alive(id).await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the server (SIGTERM, wait for exit; SIGKILL after 30 s) and starts it
    /// again on the same port and data dir, so connection ids restart from 1 and
    /// Uptime resets. Blocking.
    pub fn restart(&self) {
        let mut child = self.lock_child();
        if let Some(c) = child.take()
            && !stop_child(c, STOP_TIMEOUT)
        {
            eprintln!(
                "test mariadb on port {} ignored SIGTERM for {STOP_TIMEOUT:?}; killed it",
                self.port()
            );
        }
        if let Err(e) = self.try_start(&mut child) {
            drop(child);
            panic!(
                "test mariadb failed to restart on port {}: {e}\n--- server log ({}) ---\n{}",
                self.port(),
                self.log.display(),
                self.log_contents()
            );
        }
    }

    /// The server log so far (for diagnostics).
    pub fn log_contents(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<could not read log: {e}>"))
    }

    // ----- internals -----

    /// The child slot, even if a panicking thread poisoned the lock.
    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This instance's own temporary directory: concurrent bootstraps sharing `/tmp`
    /// collide on their temporary tables.
    fn tmpdir(&self) -> PathBuf {
        self.base.join("tmp")
    }

    fn install_db(&self) {
        let datadir = format!("--datadir={}", path_str(&self.data));
        let tmpdir = self.tmpdir();
        fs::create_dir_all(&tmpdir).expect("create the instance's tmpdir");
        let tmpdir_arg = format!("--tmpdir={}", path_str(&tmpdir));
        let mut last = None;
        // A bootstrap that still fails is retried once on a clean data directory.
        for _ in 0..2 {
            let out = Command::new("mariadb-install-db")
                .args([
                    "--no-defaults",
                    "--user=root",
                    &datadir,
                    &tmpdir_arg,
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ])
                .current_dir(&self.base)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| {
                    panic!("could not run mariadb-install-db (is MariaDB on PATH?): {e}")
                });
            if out.status.success() {
                return;
            }
            let _ = fs::remove_dir_all(&self.data);
            last = Some(out);
        }
        panic!(
            "mariadb-install-db failed twice: {}",
            describe(&last.expect("two attempts"))
        );
    }

    /// Spawns `mariadbd` into `slot` and waits until root can log in over TCP on our
    /// socket's server; Err(reason) otherwise, with the child stopped.
    fn try_start(&self, slot: &mut Option<Child>) -> Result<(), String> {
        // Early failures (before the error log is opened) land in the same file.
        let log_file = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|e| format!("open {}: {e}", self.log.display()))
        };
        let mut cmd = Command::new("mariadbd");
        cmd.args([
            "--no-defaults".to_owned(),
            "--user=root".to_owned(),
            format!("--datadir={}", path_str(&self.data)),
            format!("--port={}", self.port()),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--socket={}", path_str(&self.sock)),
            format!("--pid-file={}", path_str(&self.pid_file)),
            format!("--log-error={}", path_str(&self.log)),
            "--skip-log-bin".to_owned(),
            format!("--tmpdir={}", path_str(&self.tmpdir())),
            "--max-connections=200".to_owned(),
        ])
        .args(&self.extra_args)
        .current_dir(&self.base)
        .stdin(Stdio::null())
        .stdout(log_file()?)
        .stderr(log_file()?);
        let child = cmd
            .spawn()
            .map_err(|e| format!("could not run mariadbd (is MariaDB on PATH?): {e}"))?;
        let child = slot.insert(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port()));
        let mut last = String::from("no TCP connect yet");
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => {
                    *slot = None;
                    return Err(format!("mariadbd exited during startup: {status}"));
                }
                Ok(None) => {}
                Err(e) => last = format!("try_wait: {e}"),
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                match self.root_login_check() {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(c) = slot.take() {
            stop_child(c, DROP_STOP_TIMEOUT);
        }
        Err(format!(
            "root could not log in on 127.0.0.1:{} after {START_TIMEOUT:?} (last: {last})",
            self.port()
        ))
    }

    /// A real root login over TCP that also checks it reached our server (by its socket
    /// path), run on a separate thread with its own runtime so it works from async tests.
    fn root_login_check(&self) -> Result<(), String> {
        let opts = self.connect_options("root");
        let want_sock = path_str(&self.sock).to_owned();
        std::thread::scope(|s| {
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("build runtime: {e}"))?;
                rt.block_on(async move {
                    let mut conn = MySqlConnection::connect_with(&opts)
                        .await
                        .map_err(|e| format!("root login: {e}"))?;
                    let sock: String = sqlx::query_scalar("SELECT @@socket")
                        .fetch_one(&mut conn)
                        .await
                        .map_err(|e| format!("SELECT @@socket: {e}"))?;
                    let _ = conn.close().await;
                    if sock == want_sock {
                        Ok(())
                    } else {
                        Err(format!("port answered by another server (socket {sock})"))
                    }
                })
            })
            .join()
            .unwrap_or_else(|_| Err("readiness check panicked".to_owned()))
        })
    }
}

impl Drop for TestMariaDb {
    fn drop(&mut self) {
        if let Some(child) = self.lock_child().take() {
            stop_child(child, DROP_STOP_TIMEOUT);
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// SIGTERM (via `kill`), wait up to `timeout`, then SIGKILL and reap. Returns true if
/// it exited on SIGTERM. Never panics.
fn stop_child(mut child: Child, timeout: Duration) -> bool {
    if let Ok(Some(_)) = child.try_wait() {
        return true;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// A fresh directory under /tmp (mode 0755).
fn make_base_dir() -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("sever-mariadb-")
        .tempdir_in("/tmp")
        .expect("create temp dir under /tmp")
        .keep();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}
