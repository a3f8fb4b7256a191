//! What a [`TestBao`] started with [`TestBao::start_audited`] saw: its file audit device's
//! response entries, so a test can count the requests sever made (logins, renewals, reads)
//! and find any that OpenBao refused, without relying on sever's own logs.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{AUDIT_DEVICE, TestBao, parse_time, read_log, str_at};

/// The audit log's file name in [`TestBao::dir`].
pub(super) const FILE: &str = "audit.log";

/// One request as the audit device recorded its response.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// When OpenBao answered.
    pub time: DateTime<Utc>,
    /// `request.path`, after `/v1/` (e.g. `auth/token/renew-self`).
    pub path: String,
    /// `request.operation` (`read`, `update`, `list`, …).
    pub operation: String,
    /// `request.namespace.path` ("" for the root namespace).
    pub namespace: String,
    /// `request.client_token`, HMAC'd ("" without a token, e.g. a login); compare with
    /// [`TestBao::audit_hash`].
    pub client_token: String,
    /// The token's policies as OpenBao resolved them (empty when it refused the token).
    pub policies: Vec<String>,
    /// The error OpenBao answered with (e.g. "permission denied"), if any.
    pub error: Option<String>,
    /// The whole entry.
    pub raw: Value,
}

impl AuditEvent {
    /// Made with the root token (the test's own set-up and checks).
    pub fn as_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    /// OpenBao refused it for its token or the token's policy ("permission denied").
    pub fn denied(&self) -> bool {
        self.error
            .as_deref()
            .is_some_and(|e| e.contains("permission denied"))
    }
}

impl TestBao {
    /// Every response the audit device has logged so far, oldest first. Panics unless
    /// started with [`TestBao::start_audited`].
    pub fn audit_events(&self) -> Vec<AuditEvent> {
        let path = self.dir().join(FILE);
        assert!(
            path.exists(),
            "audit_events: no {} (start with TestBao::start_audited)",
            path.display()
        );
        read_log(&path)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| entry["type"] == "response")
            .map(|entry| AuditEvent {
                time: parse_time(&str_at(&entry, "/time")),
                path: text(&entry, "/request/path"),
                operation: text(&entry, "/request/operation"),
                namespace: text(&entry, "/request/namespace/path"),
                client_token: text(&entry, "/request/client_token"),
                policies: entry
                    .pointer("/auth/policies")
                    .and_then(Value::as_array)
                    .map(|ps| {
                        ps.iter()
                            .filter_map(|p| p.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                error: entry
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                raw: entry,
            })
            .collect()
    }

    /// `input` (e.g. a token) hashed as the audit device hashes it, to match
    /// [`AuditEvent::client_token`].
    pub async fn audit_hash(&self, input: &str) -> String {
        let reply = self
            .ok(
                "",
                "POST",
                &format!("sys/audit-hash/{AUDIT_DEVICE}"),
                Some(&json!({"input": input})),
            )
            .await;
        str_at(&reply, "/data/hash")
    }
}

fn text(entry: &Value, pointer: &str) -> String {
    entry
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}
