//! PagerDuty Events API v2: failures open an incident whose `dedup_key` is the action's (or
//! the target's, or the audit chain's), so PagerDuty groups repeats; an action or lock that
//! then succeeds resolves the incident, and only one this channel triggered; what merely
//! changed (a rotation that completed, a lock taken, a policy fired) goes as a change event,
//! which pages nobody. What to send is decided when the notice is queued.

use serde_json::{Value, json};

use super::content::{Digest, PagerdutySend, plain};
use super::deliver::{Attempt, Failure, Sent, post};
use super::outbox::{self, Claimed};
use super::{Event, Notice, Notifier, Severity};

/// `summary` is at most this long (PagerDuty's limit).
const SUMMARY_MAX: usize = 1024;

/// The dedup key of the incident a notice is about: its action's, else its target's (a
/// target down), else its event's.
fn dedup_key(notice: &Notice, event: Event) -> String {
    match (notice.action_id, event) {
        (Some(id), _) => format!("sever/action/{id}"),
        (None, Event::TargetDown) => {
            format!(
                "sever/target/{}",
                notice.targets.first().map_or("", String::as_str)
            )
        }
        (None, _) => format!("sever/{}", event.as_str()),
    }
}

/// Whether `event` opens an incident.
fn triggers(event: Event) -> bool {
    matches!(
        event,
        Event::ActionIncomplete
            | Event::ActionGivenUp
            | Event::SessionsRemaining
            | Event::LockRestoreFailed
            | Event::AuditChainBroken
            | Event::TargetDown
    )
}

/// What a PagerDuty channel sends for `notice`, with its dedup key; `None`: nothing (a
/// success nothing was triggered for, that changed nothing worth a change event).
pub async fn decide(
    conn: &mut sqlx::AnyConnection,
    channel: &str,
    notice: &Notice,
    event: Event,
) -> Result<Option<(PagerdutySend, String)>, sqlx::Error> {
    let key = dedup_key(notice, event);
    if triggers(event) {
        return Ok(Some((PagerdutySend::Trigger, key)));
    }
    if matches!(event, Event::ActionCompleted | Event::LockEnded) {
        // A rotation's completed action is a change worth recording; a revocation's is not.
        let change = event == Event::ActionCompleted && notice.credential.is_some();
        if outbox::has_trigger(conn, channel, &key).await? {
            let send = if change {
                PagerdutySend::ResolveAndChange
            } else {
                PagerdutySend::Resolve
            };
            return Ok(Some((send, key)));
        }
        return Ok(change.then_some((PagerdutySend::Change, key)));
    }
    Ok(Some((PagerdutySend::Change, key)))
}

/// What folds together, and the row's subject: incidents per dedup key, change events per
/// event.
pub fn coalesce_key(event: Event, send: PagerdutySend, key: String) -> (String, Option<String>) {
    match send {
        PagerdutySend::Change => (event.as_str().to_owned(), None),
        _ => (format!("{}|{key}", event.as_str()), Some(key)),
    }
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

/// One line: the title and the fields, plain text, cut to PagerDuty's limit.
pub fn summary(digest: &Digest) -> String {
    let mut text = format!("sever: {}", digest.title());
    for (label, values) in digest.fields() {
        if matches!(label, "When" | "Actions") {
            continue;
        }
        text.push_str(&format!(
            "; {}: {}",
            label.to_lowercase(),
            values.join(", ")
        ));
    }
    let text = plain(&text);
    if text.chars().count() <= SUMMARY_MAX {
        return text;
    }
    let mut cut: String = text.chars().take(SUMMARY_MAX - 1).collect();
    cut.push('…');
    cut
}

/// The Events API body of a trigger (`routing_key` added when sent).
pub fn trigger_body(digest: &Digest, row_id: uuid::Uuid, dedup_key: &str) -> Value {
    let mut payload = json!({
        "summary": summary(digest),
        "source": "sever",
        "severity": severity(digest.severity),
        "timestamp": digest.last_at,
        "class": digest.event.as_str(),
        "custom_details": digest.data(row_id),
    });
    if let Some(target) = digest.targets.items.first() {
        payload["component"] = json!(plain(target));
    }
    if let Some(credential) = digest.credentials.items.first() {
        payload["group"] = json!(plain(credential));
    }
    json!({
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": payload,
        "client": "sever",
    })
}

/// The Events API body of a resolve.
pub fn resolve_body(dedup_key: &str) -> Value {
    json!({"event_action": "resolve", "dedup_key": dedup_key})
}

/// The change-events body.
pub fn change_body(digest: &Digest, row_id: uuid::Uuid) -> Value {
    json!({
        "payload": {
            "summary": summary(digest),
            "source": "sever",
            "timestamp": digest.last_at,
            "custom_details": digest.data(row_id),
        },
    })
}

/// Sends `row` to PagerDuty at `base` with `routing_key`.
pub async fn send(
    notifier: &Notifier,
    client: &reqwest::Client,
    channel: &str,
    base: &str,
    routing_key: &str,
    row: &Claimed,
) -> Attempt {
    let digest = &row.digest;
    let with_key = |mut body: Value| {
        body["routing_key"] = json!(routing_key);
        serde_json::to_vec(&body).unwrap_or_default()
    };
    let enqueue = format!("{base}/v2/enqueue");
    let key = row.subject.as_deref().unwrap_or_default();
    let send = digest.pagerduty.unwrap_or(PagerdutySend::Change);
    let json = [("content-type", "application/json".to_owned())];
    match send {
        PagerdutySend::Trigger => {
            post(
                client,
                &enqueue,
                with_key(trigger_body(digest, row.id, key)),
                &json,
            )
            .await?;
            return Ok(Sent::Triggered(key.to_owned()));
        }
        PagerdutySend::Resolve | PagerdutySend::ResolveAndChange => {
            let store = &notifier.store;
            let triggered = outbox::triggered(store, channel, key)
                .await
                .map_err(|e| Failure::retry(format!("outbox: {e}")))?;
            let mut resolved = false;
            if triggered {
                post(client, &enqueue, with_key(resolve_body(key)), &json).await?;
                resolved = true;
            } else {
                // Still queued (or retrying): what it would open has passed already.
                outbox::supersede_triggers(store, channel, key, row.id)
                    .await
                    .map_err(|e| Failure::retry(format!("outbox: {e}")))?;
            }
            if send == PagerdutySend::Resolve {
                return Ok(if resolved {
                    Sent::Resolved(key.to_owned())
                } else {
                    Sent::Skipped
                });
            }
            let change = format!("{base}/v2/change/enqueue");
            post(
                client,
                &change,
                with_key(change_body(digest, row.id)),
                &json,
            )
            .await?;
            return Ok(if resolved {
                Sent::Resolved(key.to_owned())
            } else {
                Sent::Delivered
            });
        }
        PagerdutySend::Change => {}
    }
    let change = format!("{base}/v2/change/enqueue");
    post(
        client,
        &change,
        with_key(change_body(digest, row.id)),
        &json,
    )
    .await?;
    Ok(Sent::Delivered)
}
