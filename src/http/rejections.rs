//! Coalesces refused requests for the audit trail, so that a flood of bad requests can neither
//! grow the trail without bound nor queue valid events behind its writes (every record is a
//! write under the chain's one lock).
//!
//! Within a window (the time between two [`Rejections::drain`]s), the first `burst` refusals
//! per key (client address, actor, code) are recorded one by one, as they happen, up to
//! `budget` across all keys. Every further refusal is only counted in memory, and `drain`
//! turns each key's count into one `request.rejected` summary record (`"summary": true`)
//! with the count, the first and last time and the paths. Every `request.rejected` record
//! carries `count`, so their sum is the number of refused requests. At most `max_keys` keys
//! are tracked per window; refusals from further addresses are counted under address `*`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::RequestMeta;
use crate::audit::{Entry, Kind};
use crate::store::timestamp;

/// How often counted refusals are written as summaries.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Refusals recorded one by one per key and window.
pub const BURST: u32 = 5;
/// Refusals recorded one by one per window, across all keys.
pub const BUDGET: u32 = 300;
/// Keys tracked per window, beyond which addresses are counted together as `*`.
pub const MAX_KEYS: usize = 256;
/// Distinct paths listed in a summary; the rest are counted as `other_paths`.
const MAX_PATHS: usize = 8;
/// Longest path kept in a summary (paths are chosen by the client).
const MAX_PATH_CHARS: usize = 200;

/// The limits; [`Limits::default`] is what the server uses.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`BURST`].
    pub burst: u32,
    /// See [`BUDGET`].
    pub budget: u32,
    /// See [`MAX_KEYS`].
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            burst: BURST,
            budget: BUDGET,
            max_keys: MAX_KEYS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    /// The client's IP address without its port (a new connection has a new port).
    remote: String,
    actor: String,
    code: &'static str,
}

#[derive(Debug)]
struct Bucket {
    status: u16,
    recorded: u32,
    counted: u64,
    first_at: Option<DateTime<Utc>>,
    last_at: Option<DateTime<Utc>>,
    /// `METHOD path` → count.
    paths: BTreeMap<String, u64>,
    other_paths: u64,
}

#[derive(Debug, Default)]
struct Window {
    buckets: BTreeMap<Key, Bucket>,
    recorded: u32,
}

/// The refusals of the current window.
#[derive(Debug)]
pub struct Rejections {
    limits: Limits,
    window: Mutex<Window>,
}

impl Default for Rejections {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

/// The client's address without the port; other remotes (`vault`, `unknown`) as they are.
fn client(remote: &str) -> String {
    remote
        .parse::<SocketAddr>()
        .map_or_else(|_| remote.to_owned(), |addr| addr.ip().to_string())
}

impl Rejections {
    /// An empty window with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            window: Mutex::new(Window::default()),
        }
    }

    /// Notes a refusal at `at`; `true` if it is to be recorded on its own now, `false` if it
    /// was counted for the window's summary.
    pub fn observe(
        &self,
        meta: &RequestMeta,
        actor: &str,
        code: &'static str,
        status: u16,
        at: DateTime<Utc>,
    ) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let Window { buckets, recorded } = &mut *window;
        let mut key = Key {
            remote: client(&meta.remote),
            actor: actor.to_owned(),
            code,
        };
        if !buckets.contains_key(&key) && buckets.len() >= self.limits.max_keys {
            // Bounded by the actors and codes there are.
            key.remote = "*".to_owned();
        }
        let bucket = buckets.entry(key).or_insert_with(|| Bucket {
            status,
            recorded: 0,
            counted: 0,
            first_at: None,
            last_at: None,
            paths: BTreeMap::new(),
            other_paths: 0,
        });
        if bucket.recorded < self.limits.burst && *recorded < self.limits.budget {
            bucket.recorded += 1;
            *recorded += 1;
            return true;
        }
        bucket.counted += 1;
        bucket.first_at.get_or_insert(at);
        bucket.last_at = Some(at);
        let path: String = format!("{} {}", meta.method, meta.path)
            .chars()
            .take(MAX_PATH_CHARS)
            .collect();
        if let Some(n) = bucket.paths.get_mut(&path) {
            *n += 1;
        } else if bucket.paths.len() < MAX_PATHS {
            bucket.paths.insert(path, 1);
        } else {
            bucket.other_paths += 1;
        }
        false
    }

    /// Ends the window: one summary record per key with counted refusals, oldest key order.
    pub fn drain(&self) -> Vec<Entry> {
        let window = std::mem::take(&mut *self.window.lock().unwrap_or_else(|e| e.into_inner()));
        window
            .buckets
            .into_iter()
            .filter(|(_, bucket)| bucket.counted > 0)
            .map(|(key, bucket)| {
                let detail = json!({
                    "summary": true,
                    "count": bucket.counted,
                    "status": bucket.status,
                    "code": key.code,
                    "remote_addr": key.remote,
                    "first_at": bucket.first_at.map(timestamp),
                    "last_at": bucket.last_at.map(timestamp),
                    "paths": bucket.paths,
                    "other_paths": bucket.other_paths,
                    "message": format!(
                        "{} further refusals ({}) from {}, counted after the first {} were recorded",
                        bucket.counted, key.code, key.remote, bucket.recorded
                    ),
                });
                Entry::new(Kind::RequestRejected, key.actor, None, detail)
            })
            .collect()
    }
}

/// How many refused requests a `request.rejected` record stands for.
pub fn count(detail: &Value) -> u64 {
    detail["count"].as_u64().unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(remote: &str, path: &str) -> RequestMeta {
        RequestMeta {
            remote: remote.into(),
            method: "POST".into(),
            path: path.into(),
            webhook_id: None,
        }
    }

    fn limits(burst: u32, budget: u32, max_keys: usize) -> Rejections {
        Rejections::new(Limits {
            burst,
            budget,
            max_keys,
        })
    }

    /// Observes `n` refusals and returns how many were to be recorded on their own.
    fn observe(r: &Rejections, n: usize, remote: &str, code: &'static str) -> usize {
        (0..n)
            .filter(|_| {
                r.observe(
                    &meta(remote, "/v1/events"),
                    "webhook",
                    code,
                    401,
                    Utc::now(),
                )
            })
            .count()
    }

    #[test]
    fn the_first_of_a_burst_are_recorded_and_the_rest_summed_up() {
        let r = limits(3, 100, 10);
        // Another port is the same client.
        assert_eq!(observe(&r, 2, "10.0.0.1:1000", "invalid_signature"), 2);
        assert_eq!(observe(&r, 5, "10.0.0.1:2000", "invalid_signature"), 1);
        // Another code, or another client, has a burst of its own.
        assert_eq!(observe(&r, 4, "10.0.0.1:3000", "missing_header"), 3);
        assert_eq!(observe(&r, 1, "[2001:db8::1]:443", "invalid_signature"), 1);

        let summaries = r.drain();
        let details: Vec<&Value> = summaries.iter().map(|e| &e.detail).collect();
        assert_eq!(details.len(), 2, "{details:#?}");
        assert_eq!(details[0]["code"], "invalid_signature");
        assert_eq!(details[0]["remote_addr"], "10.0.0.1");
        assert_eq!(details[0]["count"], 4);
        assert_eq!(details[0]["status"], 401);
        assert_eq!(details[0]["summary"], true);
        assert_eq!(details[0]["paths"], json!({"POST /v1/events": 4}));
        assert!(details[0]["first_at"].is_string() && details[0]["last_at"].is_string());
        assert_eq!(details[1]["code"], "missing_header");
        assert_eq!(details[1]["count"], 1);
        assert!(summaries.iter().all(|e| e.kind == Kind::RequestRejected));
        assert!(summaries.iter().all(|e| e.actor == "webhook"));
        // 2 + 1 + 3 + 1 recorded on their own, 4 + 1 summed up: all 12 accounted for.
        assert_eq!(details.iter().map(|d| count(d)).sum::<u64>(), 5);

        // A new window starts with fresh bursts and nothing to summarise.
        assert!(r.drain().is_empty());
        assert_eq!(observe(&r, 3, "10.0.0.1:4000", "invalid_signature"), 3);
    }

    #[test]
    fn the_budget_caps_records_across_clients() {
        let r = limits(10, 5, 100);
        let recorded: usize = (0..4)
            .map(|i| observe(&r, 3, &format!("10.0.0.{i}:1"), "invalid_token"))
            .sum();
        assert_eq!(recorded, 5);
        let counted: u64 = r.drain().iter().map(|e| count(&e.detail)).sum();
        assert_eq!(counted, 12 - 5);
    }

    #[test]
    fn addresses_beyond_the_key_limit_are_counted_together() {
        let r = limits(1, 1000, 2);
        for i in 0..50 {
            observe(&r, 2, &format!("10.0.1.{i}:1"), "invalid_api_key");
        }
        let summaries = r.drain();
        let remotes: Vec<&str> = summaries
            .iter()
            .map(|e| e.detail["remote_addr"].as_str().unwrap())
            .collect();
        assert_eq!(remotes, ["*", "10.0.1.0", "10.0.1.1"]);
        // `*` had its own burst of one; everything else was counted.
        assert_eq!(summaries[0].detail["count"], 48 * 2 - 1);
        let counted: u64 = summaries.iter().map(|e| count(&e.detail)).sum();
        assert_eq!(counted, 100 - 3);
    }

    #[test]
    fn paths_are_listed_up_to_a_limit_and_cut_short() {
        let r = limits(0, 1000, 10);
        for i in 0..MAX_PATHS + 3 {
            let path = format!("/{i}{}", "a".repeat(1000));
            r.observe(
                &meta("10.0.0.9:1", &path),
                "anonymous",
                "not_found",
                404,
                Utc::now(),
            );
        }
        let summaries = r.drain();
        let paths = summaries[0].detail["paths"].as_object().unwrap();
        assert_eq!(paths.len(), MAX_PATHS);
        assert!(paths.keys().all(|p| p.chars().count() == MAX_PATH_CHARS));
        assert_eq!(summaries[0].detail["other_paths"], 3);
        assert_eq!(summaries[0].actor, "anonymous");
    }

    #[test]
    fn records_without_a_count_stand_for_one() {
        assert_eq!(count(&json!({"code": "invalid_signature"})), 1);
        assert_eq!(count(&json!({"count": 7})), 7);
    }
}
