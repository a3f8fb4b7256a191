//! The audit records of a finished step and of a finished action, built from the action's
//! reports.
//!
//! They live here, not in `audit`, because the flow is one-way: the queue writes them inside
//! the transaction that records the step, and the queue sits above `action`, which sits
//! above `audit`. `audit` stays a trail of generic [`Entry`]s that knows nothing of
//! actions; building them here only calls down into it.

use serde_json::{Value, json};
use uuid::Uuid;

use std::collections::BTreeMap;

use super::{ActionReport, Origin, Plan, TargetReport};
use crate::audit::{Entry, Kind};
use crate::select::{Ending, Mode};
use crate::terminate::Session;

/// A session's record: the session, its target, why a sweep chose it, and for a selector
/// plan the selector it matched and the mode. Never its query text: the trail is a hash
/// chain, and personal data written into it could not be erased.
fn session_detail(t: &TargetReport, plan: &Plan, session: &Session, extra: Value) -> Value {
    let mut detail = serde_json::to_value(session).unwrap_or_else(|_| json!({}));
    detail["target"] = json!(t.target);
    if let Some(selection) = &plan.selection {
        detail["selected_by"] = json!(selection.selector);
        if selection.all_logins {
            detail["all_logins"] = json!(true);
        }
    }
    if plan.selection.is_some() || plan.ending != Ending::TERMINATE {
        detail["mode"] = json!(plan.ending.mode);
    }
    if let Some(why) = t.outcome.sweep_reasons.get(&session.pid) {
        detail["sweep_reason"] = json!(why);
    }
    if let (Value::Object(map), Value::Object(more)) = (&mut detail, extra) {
        map.extend(more);
    }
    detail
}

/// The audit records of one finished step.
pub fn target_records(t: &TargetReport, plan: &Plan, actor: &str, action_id: Uuid) -> Vec<Entry> {
    let entry = |kind, detail| Entry::new(kind, actor, Some(action_id), detail);
    let session_detail = |t, s, extra| session_detail(t, plan, s, extra);
    let dry_run = plan.dry_run;
    let mut entries = Vec::new();
    if let Some(error) = &t.error {
        entries.push(entry(
            Kind::TargetFailed,
            json!({"target": t.target, "error": error}),
        ));
    }
    // A policy fires every interval: one summary per target, and a record per session only
    // for those it really signalled, so a standing order does not flood the trail.
    let policy = matches!(plan.origin, Origin::Policy { .. });
    if policy {
        entries.push(entry(Kind::PolicyTarget, policy_summary(t, plan)));
        if dry_run {
            return entries;
        }
    }
    if dry_run {
        let kind = match plan.ending.mode {
            Mode::Cancel => Kind::SessionWouldCancel,
            _ => Kind::SessionWouldTerminate,
        };
        for s in &t.outcome.matched {
            entries.push(entry(kind, session_detail(t, s, json!({}))));
        }
    }
    for s in &t.outcome.cancelled {
        entries.push(entry(
            Kind::SessionCancelled,
            session_detail(t, s, json!({})),
        ));
    }
    for s in &t.outcome.terminated {
        entries.push(entry(
            Kind::SessionTerminated,
            session_detail(t, s, json!({})),
        ));
    }
    for s in t.outcome.skipped.iter().filter(|_| !policy) {
        entries.push(entry(
            Kind::SessionSkipped,
            session_detail(
                t,
                &s.session,
                serde_json::to_value(&s.reason).unwrap_or_default(),
            ),
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

/// A policy's record of one target: what it saw there (its threshold), which sessions it
/// picked (pid and login, or would have, observing), what it ended, and how many it spared
/// for each reason.
fn policy_summary(t: &TargetReport, plan: &Plan) -> Value {
    let mut spared: BTreeMap<String, usize> = BTreeMap::new();
    for s in &t.outcome.skipped {
        *spared.entry(s.reason.word()).or_default() += 1;
    }
    let brief = |list: &[Session]| -> Vec<Value> {
        list.iter()
            .map(|s| json!({"pid": s.pid, "login": s.login}))
            .collect()
    };
    let mut detail = json!({
        "target": t.target,
        "observe": plan.dry_run,
        "picked": brief(&t.outcome.matched),
        "spared": spared,
    });
    if let Origin::Policy { policy, .. } = &plan.origin {
        detail["policy"] = json!(policy);
    }
    if let Some(threshold) = &t.outcome.threshold {
        detail["threshold"] = json!(threshold);
    }
    if !plan.dry_run {
        detail["terminated"] = json!(t.outcome.terminated.len());
        detail["cancelled"] = json!(t.outcome.cancelled.len());
    }
    if !t.outcome.notes.is_empty() {
        detail["notes"] = json!(t.outcome.notes);
    }
    detail
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
