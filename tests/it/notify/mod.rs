//! Outbound notifications through the real server and real PostgreSQL terminations, each
//! channel kind against a local HTTP receiver the test starts (`sever_testkit::receiver`):
//! Slack's and PagerDuty's bodies against their documented required fields, webhook
//! signatures checked by PyPI's `standardwebhooks` (an implementation independent of
//! sever's), escaping of what a database can name, a receiver that never answers, and the
//! bounds on volume (folding, the rate, the outbox's size).

mod channels;
mod delivery;
mod events;

use std::time::Duration;

use serde_json::Value;
use sever_testkit::pg::TestPostgres;
use sever_testkit::receiver::Receiver;
use sqlx::Row;

use crate::support::config::ConfigBuilder;
use crate::support::sever::{Workspace, create_admin};

/// Long enough for any delivery here; deliveries are polled every 100 ms.
const DELIVERED: Duration = Duration::from_secs(10);

/// A signing secret for outbound webhooks, none of the intake's.
pub const OUTBOUND_SECRET: &str = "whsec_b3V0Ym91bmQgc2lnbmluZyBrZXkgb2YgMzIgYnl0ZXM=";

/// A target `main` with login `app`, fast queue and notification polling, short
/// delivery timeouts and backoff, and `channels` (TOML `[[notify.channels]]` tables).
async fn config(pg: &TestPostgres, ws: &Workspace, channels: &str) -> ConfigBuilder {
    create_admin(pg).await;
    pg.create_login("app", "pw").await;
    ws.target_config(ws.config(), "main", pg)
        .set("queue.poll_interval", "100ms")
        .set("notify.poll_interval", "100ms")
        .set("notify.retry_min", "200ms")
        .set("notify.retry_max", "500ms")
        .set("notify.timeout", "1s")
        .merge_toml(channels)
}

/// A `[[notify.channels]]` table for `receiver`: `kind`-specific keys in `extra`.
fn channel(name: &str, kind: &str, extra: &str, events: &[&str]) -> String {
    let events: Vec<String> = events.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[[notify.channels]]\nname = \"{name}\"\nkind = \"{kind}\"\nallow_http = true\n\
         events = [{}]\n{extra}\n",
        events.join(", ")
    )
}

/// The outbox's rows as (id, channel, state, attempts), oldest first.
async fn outbox(ws: &Workspace) -> Vec<(String, String, String, i64)> {
    let url = format!("sqlite://{}?mode=rw", ws.path("sever.db").display());
    let store = sever::store::Store::connect(&secrecy::SecretString::from(url))
        .await
        .unwrap();
    sqlx::query("SELECT id, channel, state, attempts FROM notifications ORDER BY created_at")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get("id"),
                r.get("channel"),
                r.get("state"),
                r.get("attempts"),
            )
        })
        .collect()
}

/// Polls the audit trail until it holds `n` records of `kind`; returns them.
async fn wait_records(ws: &Workspace, kind: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + DELIVERED;
    loop {
        let records = ws.records(kind).await;
        if records.len() >= n || tokio::time::Instant::now() >= deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The requests `receiver` got on `path`.
fn on_path(receiver: &Receiver, path: &str) -> Vec<sever_testkit::receiver::Received> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.path == path)
        .collect()
}
