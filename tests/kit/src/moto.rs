//! A throwaway `moto_server` (a local AWS stand-in that speaks the real AWS wire protocol)
//! for tests that talk to Secrets Manager.
//!
//! Each [`TestMoto`] runs its own `moto_server -H 127.0.0.1 -p <free port>` with its output
//! in a temp log file, and kills it on drop. Install moto with `scripts/ensure-moto.sh`.
//!
//! Moto quirks worth knowing:
//! - reads should always name a `VersionStage` (see [`TestMoto::read`]);
//! - secrets live only as long as the process: [`TestMoto::stop`] loses them all.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use tempfile::NamedTempFile;

use crate::util::{free_port, is_executable, read_log};

/// How long a start may take before we give up and panic with the log.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How many fresh ports to try when the server dies at once (e.g. the port was taken).
const START_ATTEMPTS: usize = 3;

pub struct TestMoto {
    child: Mutex<Option<Child>>,
    port: u16,
    /// stdout and stderr of the server; removed on drop.
    log: NamedTempFile,
}

impl TestMoto {
    /// Starts `moto_server -H 127.0.0.1 -p <free port>` and waits (bounded ~20 s) until it
    /// answers HTTP. Panics with the server log if it does not.
    pub fn start() -> TestMoto {
        let bin = moto_binary();
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            match try_start(&bin) {
                Ok(moto) => return moto,
                Err(failure) => last_failure = failure,
            }
        }
        panic!(
            "moto_server ({}) did not start after {START_ATTEMPTS} attempts: {last_failure}",
            bin.display()
        );
    }

    /// `http://127.0.0.1:{port}`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A Secrets Manager client for this server: region us-east-1, static credentials
    /// `testing`/`testing`, SDK defaults for retries and timeouts. Nothing is read from the
    /// environment.
    pub fn client(&self) -> Client {
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .endpoint_url(self.endpoint())
            .build();
        Client::from_conf(config)
    }

    /// Creates a secret whose SecretString is `value` (as JSON text). Returns (ARN, VersionId
    /// of AWSCURRENT).
    pub async fn create_secret(&self, name: &str, value: &serde_json::Value) -> (String, String) {
        let out = self
            .client()
            .create_secret()
            .name(name)
            .secret_string(value.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("moto create_secret {name}: {}", err_text(&e)));
        let arn = out
            .arn()
            .expect("create_secret returned no ARN")
            .to_string();
        let version = out
            .version_id()
            .expect("create_secret returned no VersionId")
            .to_string();
        (arn, version)
    }

    /// Does what AWS's rotation Lambda templates do: `PutSecretValue` of `new_value` as
    /// AWSPENDING under a fresh token, then `UpdateSecretVersionStage` moving AWSCURRENT to it
    /// (the old current becomes AWSPREVIOUS). Returns the new VersionId (== the token).
    pub async fn rotate(&self, secret_id: &str, new_value: &serde_json::Value) -> String {
        let client = self.client();
        let (old_version, _) = self.read(secret_id, "AWSCURRENT").await;
        let token = uuid::Uuid::now_v7().to_string();
        let put = client
            .put_secret_value()
            .secret_id(secret_id)
            .secret_string(new_value.to_string())
            .client_request_token(&token)
            .version_stages("AWSPENDING")
            .send()
            .await
            .unwrap_or_else(|e| panic!("moto put_secret_value {secret_id}: {}", err_text(&e)));
        let new_version = put.version_id().unwrap_or(&token).to_string();
        client
            .update_secret_version_stage()
            .secret_id(secret_id)
            .version_stage("AWSCURRENT")
            .move_to_version_id(&new_version)
            .remove_from_version_id(&old_version)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "moto update_secret_version_stage {secret_id}: {}",
                    err_text(&e)
                )
            });
        new_version
    }

    /// Reads (VersionId, SecretString) of the version holding `stage` ("AWSCURRENT",
    /// "AWSPREVIOUS", "AWSPENDING").
    pub async fn read(&self, secret_id: &str, stage: &str) -> (String, String) {
        let out = self
            .client()
            .get_secret_value()
            .secret_id(secret_id)
            .version_stage(stage)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "moto get_secret_value {secret_id} ({stage}): {}",
                    err_text(&e)
                )
            });
        let version = out
            .version_id()
            .expect("get_secret_value returned no VersionId")
            .to_string();
        let value = out
            .secret_string()
            .expect("get_secret_value returned no SecretString")
            .to_string();
        (version, value)
    }

    /// Kills the server (simulates Secrets Manager being unreachable). Idempotent. Every
    /// secret it held is gone.
    pub fn stop(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        read_log(self.log.path())
    }
}

impl Drop for TestMoto {
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

/// One start on a fresh port. `Err` (with the log) when the server exits before answering,
/// so the caller can try another port; panics when it neither exits nor answers in time.
fn try_start(bin: &Path) -> Result<TestMoto, String> {
    let port = free_port();
    let log = tempfile::Builder::new()
        .prefix("moto-")
        .suffix(".log")
        .tempfile()
        .expect("create moto log file");
    let stdout = log.reopen().expect("open moto log file");
    let stderr = log.reopen().expect("open moto log file");
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let moto = TestMoto {
        child: Mutex::new(Some(child)),
        port,
        log,
    };

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if answers_http(port) {
            return Ok(moto);
        }
        if let Some(status) = lock(&moto.child)
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            return Err(format!(
                "it exited with {status} on port {port}; log:\n{}",
                moto.log()
            ));
        }
        if Instant::now() >= deadline {
            let log = moto.log();
            drop(moto);
            panic!(
                "moto_server did not answer on 127.0.0.1:{port} within {START_TIMEOUT:?}; log:\n{log}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when something on the port answers `GET /moto-api/` with an HTTP status line.
fn answers_http(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    head[..got].starts_with(b"HTTP/1.")
}

/// `moto_server` from PATH, else from Python's scripts dir (where pip puts it).
fn moto_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("moto_server"))
                .find(|p| is_executable(p))
        })
        .unwrap_or_default();
    if let Some(bin) = on_path {
        return bin;
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(bin) = scripts.map(|dir| dir.join("moto_server"))
        && is_executable(&bin)
    {
        return bin;
    }
    panic!(
        "moto_server not found on PATH nor in Python's scripts dir: \
         run scripts/ensure-moto.sh (installs moto[server] from PyPI)"
    );
}

fn lock(child: &Mutex<Option<Child>>) -> MutexGuard<'_, Option<Child>> {
    child
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The full error chain of an SDK error, for panic messages.
fn err_text(e: &(dyn std::error::Error + 'static)) -> String {
    aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string()
}
