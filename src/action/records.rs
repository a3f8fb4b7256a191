//! The audit records of a finished step and of a finished action, built from the action's
//! reports.
//!
//! They live here, not in `audit`, because the flow is one-way: the queue writes them inside
//! the transaction that records the step, and the queue sits above `action`, which sits
//! above `audit`. `audit` stays a trail of generic [`Entry`]s that knows nothing of
//! actions; building them here only calls down into it.

use serde_json::{Value, json};
use uuid::Uuid;

use super::{ActionReport, TargetReport};
use crate::audit::{Entry, Kind};
use crate::terminate::Session;

fn session_detail(t: &TargetReport, session: &Session, extra: Value) -> Value {
    let mut detail = serde_json::to_value(session).unwrap_or_else(|_| json!({}));
    detail["target"] = json!(t.target);
    if let Some(why) = t.outcome.sweep_reasons.get(&session.pid) {
        detail["sweep_reason"] = json!(why);
    }
    if let (Value::Object(map), Value::Object(more)) = (&mut detail, extra) {
        map.extend(more);
    }
    detail
}

/// The audit records of one finished step.
pub fn target_records(t: &TargetReport, dry_run: bool, actor: &str, action_id: Uuid) -> Vec<Entry> {
    let entry = |kind, detail| Entry::new(kind, actor, Some(action_id), detail);
    let mut entries = Vec::new();
    if let Some(error) = &t.error {
        entries.push(entry(
            Kind::TargetFailed,
            json!({"target": t.target, "error": error}),
        ));
    }
    if dry_run {
        for s in &t.outcome.matched {
            entries.push(entry(
                Kind::SessionWouldTerminate,
                session_detail(t, s, json!({})),
            ));
        }
    }
    for s in &t.outcome.terminated {
        entries.push(entry(
            Kind::SessionTerminated,
            session_detail(t, s, json!({})),
        ));
    }
    for s in &t.outcome.skipped {
        entries.push(entry(
            Kind::SessionSkipped,
            session_detail(t, &s.session, json!({"reason": s.reason})),
        ));
    }
    for s in &t.outcome.failed {
        entries.push(entry(
            Kind::SessionFailed,
            session_detail(t, &s.session, json!({"error": s.error})),
        ));
    }
    for s in &t.outcome.remaining {
        entries.push(entry(
            Kind::SessionRemaining,
            session_detail(t, s, json!({})),
        ));
    }
    entries
}

/// The `action.completed` record: the action's summary.
pub fn completed_record(report: &ActionReport, actor: &str) -> Entry {
    let summary: Vec<Value> = report
        .targets
        .iter()
        .map(|t| {
            json!({
                "target": t.target,
                "found": t.found,
                "terminated": t.outcome.terminated.len(),
                "skipped": t.outcome.skipped.len(),
                "failed": t.outcome.failed.len(),
                "remaining": t.outcome.remaining.len(),
                "error": t.error,
                "notes": t.outcome.notes,
            })
        })
        .collect();
    Entry::new(
        Kind::ActionCompleted,
        actor,
        Some(report.action_id),
        json!({"status": report.status, "dry_run": report.dry_run, "targets": summary}),
    )
}
