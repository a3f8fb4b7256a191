//! Prometheus metrics: every metric's name and help, and one small recording function per
//! metric (its one home), so the layers that see an event record it with a call and never
//! spell a name or a label themselves.
//!
//! Recording goes through the `metrics` facade, which does nothing until a recorder is
//! installed: the server installs one (`http::exporter`) and renders it at `GET /metrics`; the
//! CLI and unit tests record into nothing. Labels are bounded sets only (targets, sources,
//! outcomes, origins, policy names, and logins named in the config): never a login from a
//! database, a pid, an address or an id.
//!
//! A leaf: it imports no other module of the crate, so every layer may call it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};

/// Events that reached an intake, by `source` and `outcome`.
pub const EVENTS_RECEIVED: &str = "sever_events_received_total";
/// Refused requests and events, by `code`.
pub const REFUSALS: &str = "sever_refusals_total";
/// Finished actions, by `origin` and `status`.
pub const ACTIONS: &str = "sever_actions_total";
/// Sessions terminated, by `target` and `origin`.
pub const SESSIONS_TERMINATED: &str = "sever_sessions_terminated_total";
/// Sessions whose statement was cancelled, by `target` and `origin`.
pub const SESSIONS_CANCELLED: &str = "sever_sessions_cancelled_total";
/// Sessions left alone, by `target` and `reason`.
pub const SESSIONS_SKIPPED: &str = "sever_sessions_skipped_total";
/// Sessions whose termination failed, by `target` and `origin`.
pub const SESSIONS_FAILED: &str = "sever_session_terminations_failed_total";
/// Signalled sessions still connected when verification gave up, by `target` and `origin`.
pub const SESSIONS_REMAINING: &str = "sever_sessions_remaining_total";
/// Seconds from an event's receipt to its action verified clean, by `origin`.
pub const EVENT_TO_CLEAN: &str = "sever_event_to_clean_seconds";
/// Steps put back for another attempt, by `target` and failure `class`.
pub const STEP_RETRIES: &str = "sever_step_retries_total";
/// The worker's claims of due steps from the store, by `outcome` (`found`, `empty`).
pub const QUEUE_CLAIMS: &str = "sever_queue_claims_total";
/// Pending steps that are due (waiting or running).
pub const QUEUE_PENDING: &str = "sever_queue_pending_steps";
/// Pending steps scheduled for later (a lock's expiry, a retry's backoff).
pub const QUEUE_SCHEDULED: &str = "sever_queue_scheduled_steps";
/// How long the oldest due step has been due.
pub const QUEUE_OLDEST_AGE: &str = "sever_queue_oldest_pending_step_age_seconds";
/// Whether a target answered its last listing, by `target`.
pub const TARGET_UP: &str = "sever_target_up";
/// How long a target's last listing took, by `target`.
pub const TARGET_LATENCY: &str = "sever_target_list_duration_seconds";
/// Current sessions, by `target` and `login` (configured logins; the rest as `other`).
pub const SESSIONS: &str = "sever_sessions";
/// Seconds one store write (a transaction with its audit records) took, by `outcome`.
pub const STORE_WRITE: &str = "sever_store_write_duration_seconds";
/// When the checkpoint writer last checked the audit chain.
pub const CHAIN_VERIFIED_AT: &str = "sever_audit_chain_verified_timestamp_seconds";
/// 1 while no tampering of the audit chain was noticed since start.
pub const CHAIN_OK: &str = "sever_audit_chain_ok";
/// When the last audit checkpoint was written.
pub const CHECKPOINT_AT: &str = "sever_audit_checkpoint_timestamp_seconds";
/// Seconds since the last audit checkpoint was written, as of the scrape.
pub const CHECKPOINT_AGE: &str = "sever_audit_checkpoint_age_seconds";
/// Seconds left of sever's Vault token, as of the scrape.
pub const VAULT_TOKEN_TTL: &str = "sever_vault_token_ttl_seconds";
/// Session-policy evaluations, by `policy` and `outcome`.
pub const POLICY_EVALUATIONS: &str = "sever_policy_evaluations_total";
/// Sessions a policy's evaluations matched, by `policy`.
pub const POLICY_MATCHED: &str = "sever_policy_matched_sessions_total";
/// Notifications by `channel` and `outcome` (`delivered`, `given_up`, `dropped`, `folded`).
pub const NOTIFICATIONS: &str = "sever_notifications_total";
/// Failed delivery attempts, by `channel`.
pub const NOTIFICATION_FAILURES: &str = "sever_notification_attempts_failed_total";
/// Notifications waiting in the outbox, by `channel`.
pub const NOTIFICATION_OUTBOX: &str = "sever_notification_outbox";
/// Always 1, with the running `version`.
pub const BUILD_INFO: &str = "sever_build_info";

/// Buckets of the event-to-clean time, in seconds: a clean target answers in milliseconds;
/// graceful modes, slow verification and retries take seconds to minutes.
pub const EVENT_TO_CLEAN_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Buckets of store writes, in seconds: one fsync on a local disk to a slow remote database.
pub const STORE_WRITE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every histogram with its buckets: rendered as Prometheus histograms, not summaries.
pub const HISTOGRAMS: &[(&str, &[f64])] = &[
    (EVENT_TO_CLEAN, EVENT_TO_CLEAN_BUCKETS),
    (STORE_WRITE, STORE_WRITE_BUCKETS),
];

/// The label value that stands for every login the config does not name.
pub const OTHER_LOGIN: &str = "other";

/// Describes every metric (help text and unit) and sets `sever_build_info`; called once,
/// when the recorder is installed.
pub fn describe() {
    let counters: &[(&'static str, &'static str)] = &[
        (
            EVENTS_RECEIVED,
            "Events that reached an intake, by source and outcome (accepted, duplicate, \
             ignored, refused, failed).",
        ),
        (
            REFUSALS,
            "Refused requests and events, by the refusal's code.",
        ),
        (
            ACTIONS,
            "Finished actions (dry runs excepted), by origin and status (completed, incomplete).",
        ),
        (
            SESSIONS_TERMINATED,
            "Sessions terminated and verified gone, by target and the action's origin.",
        ),
        (
            SESSIONS_CANCELLED,
            "Sessions whose running statement was cancelled, by target and the action's origin.",
        ),
        (
            SESSIONS_SKIPPED,
            "Sessions in scope that were left alone, by target and reason.",
        ),
        (
            SESSIONS_FAILED,
            "Sessions whose termination failed, by target and the action's origin.",
        ),
        (
            SESSIONS_REMAINING,
            "Signalled sessions still connected when verification gave up, by target and origin.",
        ),
        (
            STEP_RETRIES,
            "Steps put back for another attempt, by target and failure class.",
        ),
        (
            QUEUE_CLAIMS,
            "Claims of due steps from the store, by outcome: found (at least one step) or \
             empty. Steps accepted by this replica start without one.",
        ),
        (
            POLICY_EVALUATIONS,
            "Session-policy evaluations, by policy and outcome.",
        ),
        (
            POLICY_MATCHED,
            "Sessions matched by session-policy evaluations, by policy.",
        ),
        (
            NOTIFICATIONS,
            "Notifications by channel and outcome: delivered, given_up (retried too long or \
             refused), dropped (the channel's outbox was full), folded (coalesced into a \
             message already waiting).",
        ),
        (
            NOTIFICATION_FAILURES,
            "Failed notification delivery attempts, by channel.",
        ),
    ];
    for &(name, help) in counters {
        describe_counter!(name, Unit::Count, help);
    }
    describe_histogram!(
        EVENT_TO_CLEAN,
        Unit::Seconds,
        "Seconds from a rotation event's receipt to its action verified clean (completed), \
         by origin."
    );
    describe_histogram!(
        STORE_WRITE,
        Unit::Seconds,
        "Seconds one store write (a transaction with its audit records) took, by outcome."
    );
    let gauges: &[(&'static str, Unit, &'static str)] = &[
        (
            QUEUE_PENDING,
            Unit::Count,
            "Pending steps that are due (waiting for a worker or running).",
        ),
        (
            QUEUE_SCHEDULED,
            Unit::Count,
            "Pending steps scheduled for later (retry backoffs, lock and drain expiries).",
        ),
        (
            QUEUE_OLDEST_AGE,
            Unit::Seconds,
            "Seconds the oldest due step has been due (0 with none).",
        ),
        (
            TARGET_UP,
            Unit::Count,
            "1 if the target answered its last session listing, else 0.",
        ),
        (
            TARGET_LATENCY,
            Unit::Seconds,
            "Seconds the target's last session listing took (or took to fail).",
        ),
        (
            SESSIONS,
            Unit::Count,
            "Current sessions by target and login: logins named in the config, every other \
             login summed as login=\"other\".",
        ),
        (
            CHAIN_VERIFIED_AT,
            Unit::Seconds,
            "Unix time the checkpoint writer last checked the audit chain.",
        ),
        (
            CHAIN_OK,
            Unit::Count,
            "1 while no tampering with the audit chain was noticed since start, else 0.",
        ),
        (
            CHECKPOINT_AT,
            Unit::Seconds,
            "Unix time the last audit checkpoint was written.",
        ),
        (
            CHECKPOINT_AGE,
            Unit::Seconds,
            "Seconds since the last audit checkpoint was written, as of the scrape.",
        ),
        (
            VAULT_TOKEN_TTL,
            Unit::Seconds,
            "Seconds left of sever's Vault token, as of the scrape (+Inf: it never expires; \
             0: there is none).",
        ),
        (
            NOTIFICATION_OUTBOX,
            Unit::Count,
            "Notifications waiting in the outbox (to send or to retry), by channel.",
        ),
        (
            BUILD_INFO,
            Unit::Count,
            "Always 1; the version label says which sever runs.",
        ),
    ];
    for &(name, unit, help) in gauges {
        describe_gauge!(name, unit, help);
    }
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Starts at 0 the counters the shipped alerts take `increase()` of, for every configured
/// target and every action origin: Prometheus sees no increase in a series whose first
/// sample is already 1, so an alert on the first incomplete action would never fire.
pub fn initialize<'a>(targets: impl IntoIterator<Item = &'a str>, origins: &[&'static str]) {
    for &origin in origins {
        for status in ["completed", "incomplete"] {
            counter!(ACTIONS, "origin" => origin, "status" => status).increment(0);
        }
    }
    for target in targets {
        for &origin in origins {
            counter!(SESSIONS_REMAINING, "target" => target.to_owned(), "origin" => origin)
                .increment(0);
        }
    }
}

/// An event reached an intake: `source` is its door as the audit trail names the actor
/// (`webhook`, `aws:sns`, `vault:watcher`, …); `outcome` is `accepted`, `duplicate`,
/// `ignored` (needs no action), `refused` or `failed` (sever could not take it).
pub fn event_received(source: &'static str, outcome: &'static str) {
    counter!(EVENTS_RECEIVED, "source" => source, "outcome" => outcome).increment(1);
}

/// A request or event was refused with `code` (`invalid_signature`, `invalid_token`, …).
pub fn refused(code: &'static str) {
    counter!(REFUSALS, "code" => code).increment(1);
}

/// An action finished: its `origin` (`event`, `revocation`, …) and `status` (`completed`,
/// `incomplete`).
pub fn action_finished(origin: &'static str, status: &'static str) {
    counter!(ACTIONS, "origin" => origin, "status" => status).increment(1);
}

/// A rotation event's action (origin `event`, `aws` or `vault`) was verified clean `took`
/// after the event was received.
pub fn event_to_clean(origin: &'static str, took: Duration) {
    metrics::histogram!(EVENT_TO_CLEAN, "origin" => origin).record(took.as_secs_f64());
}

/// What one finished step decided about its sessions, one word per session as reports
/// write them: `terminated`, `cancelled`, `failed`, `remaining`, or a skip reason
/// (`protected`, `not_before_cutoff`, `unknown_state`, …). Dry-run words (`would_…`) count
/// nothing.
pub fn step_sessions<'a>(
    target: &str,
    origin: &'static str,
    decisions: impl IntoIterator<Item = &'a str>,
) {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for decision in decisions {
        *counts.entry(decision).or_default() += 1;
    }
    for (decision, n) in counts {
        let target = target.to_owned();
        match decision {
            "terminated" => counter!(SESSIONS_TERMINATED, "target" => target, "origin" => origin),
            "cancelled" => counter!(SESSIONS_CANCELLED, "target" => target, "origin" => origin),
            "failed" => counter!(SESSIONS_FAILED, "target" => target, "origin" => origin),
            "remaining" => counter!(SESSIONS_REMAINING, "target" => target, "origin" => origin),
            would if would.starts_with("would_") => continue,
            reason => counter!(SESSIONS_SKIPPED, "target" => target, "reason" => reason.to_owned()),
        }
        .increment(n);
    }
}

/// A failed step on `target` was put back for another attempt; `class` is how its failure
/// is retried (`unreachable`, `transient`, `deterministic`, `fatal`).
pub fn step_retried(target: &str, class: &'static str) {
    counter!(STEP_RETRIES, "target" => target.to_owned(), "class" => class).increment(1);
}

/// A claim of due steps took `found` of them from the store.
pub fn queue_claimed(found: usize) {
    let outcome = if found > 0 { "found" } else { "empty" };
    counter!(QUEUE_CLAIMS, "outcome" => outcome).increment(1);
}

/// The queue as last read: pending steps that are `due`, those `scheduled` for later, and
/// how long the oldest due one has been due.
pub fn queue(due: u64, scheduled: u64, oldest_due: Duration) {
    gauge!(QUEUE_PENDING).set(due as f64);
    gauge!(QUEUE_SCHEDULED).set(scheduled as f64);
    gauge!(QUEUE_OLDEST_AGE).set(oldest_due.as_secs_f64());
}

/// A session listing of `target` answered (`up`) or failed, after `took`.
pub fn target_listed(target: &str, up: bool, took: Duration) {
    gauge!(TARGET_UP, "target" => target.to_owned()).set(if up { 1.0 } else { 0.0 });
    gauge!(TARGET_LATENCY, "target" => target.to_owned()).set(took.as_secs_f64());
}

/// The logins reported per target last time, so a login missing now is set to 0 rather
/// than left at its old count.
static REPORTED_LOGINS: Mutex<BTreeMap<String, BTreeSet<String>>> = Mutex::new(BTreeMap::new());

/// Current sessions on `target` by login label (configured logins and [`OTHER_LOGIN`]);
/// a login reported before and absent now is set to 0.
pub fn sessions(target: &str, counts: &BTreeMap<String, u64>) {
    let mut reported = REPORTED_LOGINS.lock().unwrap_or_else(|e| e.into_inner());
    let before = reported.insert(target.to_owned(), counts.keys().cloned().collect());
    for gone in before.iter().flatten().filter(|l| !counts.contains_key(*l)) {
        gauge!(SESSIONS, "target" => target.to_owned(), "login" => gone.clone()).set(0.0);
    }
    for (login, n) in counts {
        gauge!(SESSIONS, "target" => target.to_owned(), "login" => login.clone()).set(*n as f64);
    }
}

/// One store write (a transaction and its audit records, retries included) took `took`.
pub fn store_write(took: Duration, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::histogram!(STORE_WRITE, "outcome" => outcome).record(took.as_secs_f64());
}

/// The checkpoint writer checked the audit chain now; `ok` while no tampering was noticed.
pub fn chain_checked(ok: bool) {
    gauge!(CHAIN_VERIFIED_AT).set(unix(SystemTime::now()));
    gauge!(CHAIN_OK).set(if ok { 1.0 } else { 0.0 });
}

/// When the last checkpoint was written, for its age at each scrape.
static CHECKPOINT_WRITTEN: Mutex<Option<SystemTime>> = Mutex::new(None);

/// An audit checkpoint was written now.
pub fn checkpoint_written() {
    let now = SystemTime::now();
    *CHECKPOINT_WRITTEN.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
    gauge!(CHECKPOINT_AT).set(unix(now));
    gauge!(CHECKPOINT_AGE).set(0.0);
}

/// sever's Vault token as last known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultToken {
    /// There is none (no login succeeded, or the last one expired).
    Missing,
    /// It never expires.
    Unlimited,
    /// It expires after this much from now.
    ExpiresIn(Duration),
}

/// When sever's Vault token expires (`None`: never), once Vault is in use.
static VAULT_EXPIRY: Mutex<Option<Option<SystemTime>>> = Mutex::new(None);

/// sever's Vault token changed (login, renewal, expiry).
pub fn vault_token(token: VaultToken) {
    let expiry = match token {
        VaultToken::Missing => Some(SystemTime::now()),
        VaultToken::Unlimited => None,
        VaultToken::ExpiresIn(left) => Some(SystemTime::now() + left),
    };
    *VAULT_EXPIRY.lock().unwrap_or_else(|e| e.into_inner()) = Some(expiry);
    refresh();
}

/// A session policy was evaluated: `outcome` in the policy's own words, `matched` the
/// sessions it matched. Policy names come from the config.
pub fn policy_evaluated(policy: &str, outcome: &'static str, matched: u64) {
    counter!(POLICY_EVALUATIONS, "policy" => policy.to_owned(), "outcome" => outcome).increment(1);
    counter!(POLICY_MATCHED, "policy" => policy.to_owned()).increment(matched);
}

/// A notification on `channel` came to `outcome`: `delivered`, `given_up`, `dropped` or
/// `folded`. Channel names come from the config.
pub fn notification(channel: &str, outcome: &'static str) {
    counter!(NOTIFICATIONS, "channel" => channel.to_owned(), "outcome" => outcome).increment(1);
}

/// A delivery attempt on `channel` failed.
pub fn notification_failed(channel: &str) {
    counter!(NOTIFICATION_FAILURES, "channel" => channel.to_owned()).increment(1);
}

/// `channel`'s outbox holds `pending` notifications.
pub fn notification_outbox(channel: &str, pending: u64) {
    gauge!(NOTIFICATION_OUTBOX, "channel" => channel.to_owned()).set(pending as f64);
}

/// Brings the gauges that are ages (checkpoint age, Vault token TTL) up to now; the
/// exporter calls it right before each render, so they never read stale between events.
pub fn refresh() {
    let now = SystemTime::now();
    let written = *CHECKPOINT_WRITTEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(at) = written {
        gauge!(CHECKPOINT_AGE).set(seconds_between(at, now));
    }
    let vault = *VAULT_EXPIRY.lock().unwrap_or_else(|e| e.into_inner());
    match vault {
        None => {}
        Some(None) => gauge!(VAULT_TOKEN_TTL).set(f64::INFINITY),
        Some(Some(at)) => gauge!(VAULT_TOKEN_TTL).set(seconds_between(now, at)),
    }
}

/// Seconds from `from` to `to`, 0 if `to` is earlier.
fn seconds_between(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap_or_default().as_secs_f64()
}

/// Unix seconds of `at`.
fn unix(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests;
