//! Small helpers every kit (and some tests) need: a free port, a failed command described, a
//! percent-encoded URL part, a log file read for a panic message, an executable check.
//! Calls only `std` and `percent-encoding`.

use std::net::TcpListener;
use std::path::Path;
use std::process::Output;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};

/// A free TCP port on 127.0.0.1 (another process may take it before the caller binds it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A finished command's status, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Every byte but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but RFC 3986 unreserved characters (for URL user info, paths
/// and query values alike).
pub fn encode(s: &str) -> String {
    encode_bytes(s.as_bytes())
}

/// [`encode`] for bytes that need not be UTF-8.
pub fn encode_bytes(bytes: &[u8]) -> String {
    percent_encode(bytes, NOT_UNRESERVED).to_string()
}

/// A server's log file, for a panic message (or why it could not be read).
pub fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// Whether `path` is a file someone may execute.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
