//! The delivery worker: per channel, claim the next due row (within the channel's rate),
//! send it, record what came of it with its audit records; and the upkeep (dropped counts
//! audited, old rows pruned, the outbox's depth measured).
//!
//! A failure is retried with backoff (`429`'s `Retry-After` honoured, and the channel left
//! alone that long) until `notify.give_up_after`; a refusal that retrying cannot change (any
//! other `4xx`, a redirect, which is never followed) is given up at once. The first failure
//! and the final outcome are audited. Errors are logged and recorded without the URL
//! (reqwest's `without_url`), and any of the channel's secrets that still shows up in a
//! receiver's answer is scrubbed.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::Rng;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::outbox::{self, Claimed};
use super::{Channel, Endpoint, Notifier, pagerduty, slack, webhook};
use crate::audit::{Decision, Entry, Kind, Transaction};
use crate::store::timestamp;
use crate::telemetry;

/// How often the upkeep runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(15);
/// Most bytes of a refusal's body kept in its error.
const BODY_KEPT: usize = 200;

/// What a successful attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Sent and accepted.
    Delivered,
    /// Nothing needed sending after all (a resolve of an incident never opened).
    Skipped,
    /// Sent, opening (or adding to) this PagerDuty incident.
    Triggered(String),
    /// Sent, resolving this PagerDuty incident.
    Resolved(String),
}

/// A failed attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What went wrong (no URL; secrets scrubbed before it is kept).
    pub error: String,
    /// Whether another attempt may succeed.
    pub retry: bool,
    /// How long the receiver asked to be left alone.
    pub after: Option<Duration>,
}

impl Failure {
    /// A failure worth another attempt.
    pub fn retry(error: String) -> Self {
        Self {
            error,
            retry: true,
            after: None,
        }
    }
}

/// One attempt's result.
pub type Attempt = Result<Sent, Failure>;

/// `error` with its causes, without the URL.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` in seconds (the form Slack and PagerDuty send), within an hour.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.clamp(1, 3600)))
}

/// POSTs `body` to `url`: `Ok` on a `2xx`; a `408`, `429` or `5xx` or no answer is worth
/// retrying, anything else is not.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
) -> Result<(), Failure> {
    let mut request = client.post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| Failure::retry(describe(e)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let after = retry_after(response.headers());
    // The start of the answer says why (Slack's `invalid_payload`, PagerDuty's errors).
    let detail = match response.chunk().await {
        Ok(Some(chunk)) => {
            let kept = &chunk[..chunk.len().min(BODY_KEPT)];
            format!(
                ": {}",
                super::content::plain(&String::from_utf8_lossy(kept))
            )
        }
        _ => String::new(),
    };
    let code = status.as_u16();
    Err(Failure {
        error: format!("HTTP {code}{detail}"),
        retry: code == 408 || code == 429 || status.is_server_error(),
        after: if code == 429 || code == 503 {
            after
        } else {
            None
        },
    })
}

/// Sends `row` once on `channel`.
async fn attempt(notifier: &Notifier, channel: &Channel, row: &Claimed) -> Attempt {
    let json = [("content-type", "application/json".to_owned())];
    let client = &channel.client;
    match &channel.endpoint {
        Endpoint::Slack { url } => {
            let body = serde_json::to_vec(&slack::body(&row.digest)).unwrap_or_default();
            post(client, url.expose_secret(), body, &json).await?;
            Ok(Sent::Delivered)
        }
        Endpoint::Pagerduty { base, routing_key } => {
            let name = &channel.config.name;
            let key = routing_key.expose_secret();
            pagerduty::send(notifier, client, name, base, key, row).await
        }
        Endpoint::Webhook { url, key } => {
            let body = serde_json::to_vec(&webhook::body(&row.digest, row.id)).unwrap_or_default();
            let now = Utc::now().timestamp();
            let headers = webhook::headers(key.expose_secret(), row.id, now, &body);
            post(client, url.expose_secret(), body, &headers).await?;
            Ok(Sent::Delivered)
        }
    }
}

/// `text` with every secret of `channel` replaced.
fn scrub(channel: &Channel, text: &str) -> String {
    let mut text = text.to_owned();
    for secret in channel.secrets() {
        if !secret.is_empty() {
            text = text.replace(secret, "[redacted]");
        }
    }
    text
}

/// Whether `channel` asked to be left alone until later than now.
fn paused(channel: &Channel) -> bool {
    let until = *channel
        .paused_until
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    until.is_some_and(|u| u > tokio::time::Instant::now())
}

/// Delivers `channel`'s due rows until `stop`: woken by what this process queues, else
/// every `notify.poll_interval`.
pub async fn channel_loop(notifier: Arc<Notifier>, channel: Arc<Channel>, stop: CancellationToken) {
    let name = channel.config.name.as_str();
    let rate = u64::from(channel.config.rate_per_minute());
    let lease = channel.config.timeout.unwrap_or(notifier.config.timeout) + Duration::from_secs(30);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = channel.wake.notified() => {}
            () = tokio::time::sleep(notifier.config.poll_interval) => {}
        }
        while !stop.is_cancelled() && !paused(&channel) {
            match outbox::attempts_last_minute(&notifier.store, name).await {
                Ok(n) if n >= rate => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(channel = name, error = %e, "cannot read the outbox");
                    break;
                }
            }
            let row = match outbox::claim(&notifier.store, name, &notifier.owner, lease).await {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(channel = name, error = %e, "cannot claim from the outbox");
                    break;
                }
            };
            let result = tokio::select! {
                () = stop.cancelled() => {
                    // Handed back at once, not after its lease: the next start sends it.
                    let _ = outbox::release(&notifier.store, row.id, &notifier.owner).await;
                    return;
                }
                result = attempt(&notifier, &channel, &row) => result,
            };
            record(&notifier, &channel, &row, result).await;
        }
    }
}

/// Exponential backoff from `retry_min` doubling per attempt, capped at `retry_max`, with
/// jitter (half to all of it).
fn backoff(attempts: i64, min: Duration, max: Duration) -> Duration {
    let exp = u32::try_from(attempts.clamp(1, 30) - 1).unwrap_or(29);
    let full = min.saturating_mul(1 << exp.min(20)).min(max);
    full.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// What to write for an attempt's result.
enum Next {
    Done { state: &'static str, sent: Sent },
    Retry { at: DateTime<Utc>, error: String },
    GiveUp { error: String },
}

/// Records what came of an attempt (logged, counted, audited).
async fn record(notifier: &Notifier, channel: &Channel, row: &Claimed, result: Attempt) {
    let name = channel.config.name.as_str();
    let event = row.digest.event.as_str();
    let now = Utc::now();
    let next = match result {
        Ok(Sent::Skipped) => Next::Done {
            state: "skipped",
            sent: Sent::Skipped,
        },
        Ok(sent) => {
            telemetry::notification(name, "delivered");
            Next::Done {
                state: "delivered",
                sent,
            }
        }
        Err(failure) => {
            telemetry::notification_failed(name);
            let error = scrub(channel, &failure.error);
            if let Some(after) = failure.after {
                let mut until = channel
                    .paused_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                *until = Some(tokio::time::Instant::now() + after);
            }
            let config = &notifier.config;
            let deadline = row.created_at
                + chrono::Duration::from_std(config.give_up_after)
                    .unwrap_or(chrono::Duration::MAX / 2);
            if !failure.retry || now >= deadline {
                telemetry::notification(name, "given_up");
                tracing::warn!(channel = name, event, notification_id = %row.id,
                    attempts = row.attempts, error = %error, "notification given up");
                Next::GiveUp { error }
            } else {
                let wait = failure
                    .after
                    .unwrap_or_else(|| backoff(row.attempts, config.retry_min, config.retry_max));
                let at = (now + chrono::Duration::from_std(wait).unwrap_or_default()).min(deadline);
                if row.attempts == 1 {
                    tracing::warn!(channel = name, event, notification_id = %row.id,
                        error = %error, "notification delivery failed; retrying");
                } else {
                    tracing::debug!(channel = name, event, notification_id = %row.id,
                        attempts = row.attempts, error = %error, "notification delivery failed again");
                }
                Next::Retry { at, error }
            }
        }
    };
    let outcome = Outcome {
        channel: name,
        kind: channel.config.kind.as_str(),
        owner: &notifier.owner,
        row,
        next,
    };
    if let Err(e) = notifier.audit.transact(&outcome).await {
        // The lease runs out and the row is tried again: at worst sent twice, same id.
        tracing::warn!(channel = name, notification_id = %row.id, error = %e,
            "cannot record a notification's outcome");
    }
}

/// Writes an attempt's result on its row (only while this process still holds its lease),
/// PagerDuty's incidents, and the audit records.
struct Outcome<'a> {
    channel: &'a str,
    kind: &'static str,
    owner: &'a str,
    row: &'a Claimed,
    next: Next,
}

#[async_trait]
impl Transaction for Outcome<'_> {
    type Output = ();

    fn is_new_work(&self) -> bool {
        false
    }

    async fn run(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<Decision<()>, sqlx::Error> {
        let row = self.row;
        let now = timestamp(Utc::now());
        let (state, due, error) = match &self.next {
            Next::Done { state, .. } => (*state, None, None),
            Next::Retry { at, error } => ("pending", Some(timestamp(*at)), Some(error.as_str())),
            Next::GiveUp { error } => ("given_up", None, Some(error.as_str())),
        };
        let updated = sqlx::query(
            "UPDATE notifications SET state = $3, due_at = COALESCE($4, due_at), \
             last_error = $5, lease_owner = NULL, lease_until = NULL, \
             finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE $6 END \
             WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
        )
        .bind(row.id.to_string())
        .bind(self.owner)
        .bind(state)
        .bind(due.clone())
        .bind(error)
        .bind(&now)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(Decision::Rollback(()));
        }
        match &self.next {
            Next::Done {
                sent: Sent::Triggered(key),
                ..
            } => {
                sqlx::query(
                    "INSERT INTO notification_incidents (channel, dedup_key, triggered_at) \
                     VALUES ($1, $2, $3) ON CONFLICT (channel, dedup_key) DO NOTHING",
                )
                .bind(self.channel)
                .bind(key)
                .bind(&now)
                .execute(&mut **tx)
                .await?;
            }
            Next::Done {
                sent: Sent::Resolved(key),
                ..
            } => {
                sqlx::query(
                    "DELETE FROM notification_incidents WHERE channel = $1 AND dedup_key = $2",
                )
                .bind(self.channel)
                .bind(key)
                .execute(&mut **tx)
                .await?;
            }
            _ => {}
        }
        let actor = format!("notify:{}", self.channel);
        let action_id = row.digest.action_id();
        let detail = |extra: serde_json::Value| {
            let mut detail = json!({
                "channel": self.channel,
                "kind": self.kind,
                "event": row.digest.event.as_str(),
                "notification_id": row.id,
                "attempts": row.attempts,
                "notices": row.folded,
            });
            if let (Some(map), Some(more)) = (detail.as_object_mut(), extra.as_object()) {
                map.extend(more.clone());
            }
            detail
        };
        let entry = |kind, extra| Entry::new(kind, &actor, action_id, detail(extra));
        let mut entries = Vec::new();
        match &self.next {
            Next::Done {
                state: "delivered", ..
            } => entries.push(entry(Kind::NotificationDelivered, json!({}))),
            Next::Done { .. } => {}
            Next::Retry { at, error } => {
                if row.attempts == 1 {
                    entries.push(entry(
                        Kind::NotificationFailed,
                        json!({"error": error, "next_attempt_at": timestamp(*at)}),
                    ));
                }
            }
            Next::GiveUp { error } => {
                if row.attempts == 1 {
                    entries.push(entry(Kind::NotificationFailed, json!({"error": error})));
                }
                entries.push(entry(Kind::NotificationGivenUp, json!({"error": error})));
            }
        }
        Ok(Decision::Commit(entries, ()))
    }
}

/// Audits what was dropped since the last time, one record per channel.
pub(super) struct Drops;

#[async_trait]
impl Transaction for Drops {
    type Output = ();

    fn is_new_work(&self) -> bool {
        false
    }

    async fn run(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<Decision<()>, sqlx::Error> {
        let drops = outbox::take_drops(tx).await?;
        if drops.is_empty() {
            return Ok(Decision::Rollback(()));
        }
        let mut by_channel: std::collections::BTreeMap<String, (serde_json::Map<_, _>, String)> =
            Default::default();
        for (channel, event, dropped, since) in drops {
            let entry = by_channel
                .entry(channel)
                .or_insert_with(|| (serde_json::Map::new(), since.clone()));
            entry.0.insert(event, dropped.into());
            entry.1 = entry.1.clone().min(since);
        }
        let entries = by_channel
            .into_iter()
            .map(|(channel, (events, since))| {
                tracing::warn!(channel = %channel, dropped = ?events,
                    "notifications dropped: the channel's outbox is full");
                Entry::new(
                    Kind::NotificationDropped,
                    format!("notify:{channel}"),
                    None,
                    json!({"channel": channel, "dropped": events, "since": since,
                           "reason": "the channel's outbox is full (notify.max_outbox)"}),
                )
            })
            .collect();
        Ok(Decision::Commit(entries, ()))
    }
}

/// Until `stop`: audits dropped notices, prunes finished rows past `keep_delivered`, and
/// sets each channel's outbox depth.
pub async fn upkeep(notifier: Arc<Notifier>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                // What was dropped until now goes on record before the process ends.
                let _ = notifier.audit.transact(&Drops).await;
                return;
            }
            _ = tick.tick() => {}
        }
        if let Err(e) = notifier.audit.transact(&Drops).await {
            tracing::warn!(error = %e, "cannot audit dropped notifications");
        }
        let keep = chrono::Duration::from_std(notifier.config.keep_delivered)
            .unwrap_or(chrono::Duration::MAX / 2);
        if let Err(e) = outbox::prune(&notifier.store, Utc::now() - keep).await {
            tracing::debug!(error = %e, "cannot prune the outbox");
        }
        match outbox::depth(&notifier.store).await {
            Ok(depths) => {
                for channel in &notifier.channels {
                    let name = &channel.config.name;
                    let n = depths
                        .iter()
                        .find(|(c, _)| c == name)
                        .map_or(0, |(_, n)| *n);
                    telemetry::notification_outbox(name, n);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the outbox's depth"),
        }
    }
}
