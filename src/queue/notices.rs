//! The notices the queue's records stand for, queued for the notifier inside the same
//! transactions: an action started (accepted with work to do) or finished (completed or
//! incomplete), a step given up, a step that left sessions connected, a lock or drain that
//! took effect or ended, a lock's restore that failed. Dry runs notify nothing.

use std::collections::BTreeMap;

use crate::action::{ActionReport, Origin, Plan, TargetReport};
use crate::notify::{Event, Notice, Notifier};
use crate::terminate::Session;

/// Sessions whose names are collected per notice; the digest keeps fewer.
const SESSIONS_READ: usize = 64;

/// A notice of `event` about `plan`'s action: its id, credential, policy and reason.
fn about(plan: &Plan, event: Event) -> Notice {
    let credential = match &plan.origin {
        Origin::Event { credential, .. } | Origin::Aws { credential, .. } => {
            Some(credential.clone())
        }
        Origin::Vault { credential, .. } => credential.clone(),
        _ => None,
    };
    let policy = match &plan.origin {
        Origin::Policy { policy, .. } => Some(policy.clone()),
        _ => None,
    };
    Notice {
        action_id: Some(plan.action_id),
        credential,
        policy,
        reason: plan.reason.clone(),
        ..Notice::new(event)
    }
}

fn push_unique(list: &mut Vec<String>, value: &str) {
    if !list.iter().any(|v| v == value) {
        list.push(value.to_owned());
    }
}

/// Adds the logins, application names and client addresses of `sessions` to `notice`.
fn add_sessions<'a>(notice: &mut Notice, sessions: impl Iterator<Item = &'a Session>) {
    for s in sessions.take(SESSIONS_READ) {
        if let Some(login) = &s.login {
            push_unique(&mut notice.logins, login);
        }
        if let Some(name) = s.application_name.as_deref().filter(|n| !n.is_empty()) {
            push_unique(&mut notice.application_names, name);
        }
        if let Some(addr) = &s.client_addr {
            push_unique(&mut notice.client_addrs, addr);
        }
    }
}

/// The sessions a step signalled or failed on.
fn touched(t: &TargetReport) -> impl Iterator<Item = &Session> {
    let o = &t.outcome;
    o.terminated
        .iter()
        .chain(&o.cancelled)
        .chain(&o.remaining)
        .chain(o.failed.iter().map(|f| &f.session))
}

/// `action.started` for a plan accepted with work to do.
pub fn started(plan: &Plan) -> Option<Notice> {
    if plan.dry_run || plan.work().is_none() {
        return None;
    }
    let mut notice = about(plan, Event::ActionStarted);
    for step in &plan.steps {
        push_unique(&mut notice.targets, &step.target);
        for login in &step.logins {
            push_unique(&mut notice.logins, login);
        }
    }
    Some(notice)
}

/// What one finished step tells: given up, sessions left, a lock or drain begun or ended.
pub fn step(plan: &Plan, report: &TargetReport) -> Vec<Notice> {
    if plan.dry_run {
        return Vec::new();
    }
    let on_target = |event| {
        let mut notice = about(plan, event);
        notice.targets = vec![report.target.clone()];
        notice.logins = report.logins.clone();
        notice
    };
    let mut notices = Vec::new();
    if let Some(error) = &report.error {
        let mut notice = on_target(Event::ActionGivenUp);
        notice.reason = Some(error.clone());
        notices.push(notice);
    }
    let remaining = &report.outcome.remaining;
    if !remaining.is_empty() {
        let mut notice = on_target(Event::SessionsRemaining);
        notice
            .counts
            .insert("remaining".into(), remaining.len() as u64);
        add_sessions(&mut notice, remaining.iter());
        notices.push(notice);
    }
    if report.error.is_none() {
        let event = match &plan.origin {
            Origin::Lock { .. } => Some(Event::LockStarted),
            Origin::Unlock { .. } => Some(Event::LockEnded),
            Origin::Drain { .. } => Some(Event::DrainStarted),
            Origin::Undrain { .. } => Some(Event::DrainEnded),
            _ => None,
        };
        if let Some(event) = event {
            let mut notice = on_target(event);
            match &plan.origin {
                Origin::Lock { login, until, .. } => {
                    notice.logins = vec![login.clone()];
                    notice.act_at = *until;
                }
                Origin::Unlock { login, .. } => notice.logins = vec![login.clone()],
                Origin::Drain { until, .. } => notice.act_at = *until,
                _ => {}
            }
            let ended = report.outcome.terminated.len() as u64;
            if ended > 0 {
                notice.counts.insert("terminated".into(), ended);
            }
            notices.push(notice);
        }
    }
    notices
}

/// `lock.restore_failed`: restoring a login after its lock failed (it is retried).
pub fn restore_failed(plan: &Plan, target: &str, error: &str, attempts: i64) -> Option<Notice> {
    let Origin::Unlock { login, .. } = &plan.origin else {
        return None;
    };
    let mut notice = about(plan, Event::LockRestoreFailed);
    notice.targets = vec![target.to_owned()];
    notice.logins = vec![login.clone()];
    notice.reason = Some(error.to_owned());
    notice
        .counts
        .insert("attempts".into(), u64::try_from(attempts).unwrap_or(0));
    Some(notice)
}

/// `action.completed` or `action.incomplete`, with the sessions' fates counted.
pub fn finished(plan: &Plan, report: &ActionReport) -> Option<Notice> {
    if report.dry_run {
        return None;
    }
    let event = match report.status {
        crate::action::Status::Completed => Event::ActionCompleted,
        crate::action::Status::Incomplete => Event::ActionIncomplete,
        // Called off or expired before acting: `announcement.cancelled` says so.
        crate::action::Status::Cancelled | crate::action::Status::Expired => return None,
    };
    let mut notice = about(plan, event);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut add = |key: &str, n: usize| {
        if n > 0 {
            *counts.entry(key.to_owned()).or_default() += n as u64;
        }
    };
    for t in &report.targets {
        push_unique(&mut notice.targets, &t.target);
        for login in &t.logins {
            push_unique(&mut notice.logins, login);
        }
        let o = &t.outcome;
        add("terminated", o.terminated.len());
        add("cancelled", o.cancelled.len());
        add("failed", o.failed.len());
        add("remaining", o.remaining.len());
        add("skipped", o.skipped.len());
        add("targets_failed", usize::from(t.error.is_some()));
    }
    for t in &report.targets {
        add_sessions(&mut notice, touched(t));
    }
    notice.counts = counts;
    Some(notice)
}

/// Queues `notices` on `notifier` in the transaction on `conn` (a notice that cannot be
/// queued is logged, and the transaction goes on).
/// Whether queueing `notices` would write an outbox row (a channel takes one of them).
pub fn any_wanted<'a>(
    notifier: Option<&Notifier>,
    notices: impl IntoIterator<Item = &'a Notice>,
) -> bool {
    notifier.is_some_and(|n| notices.into_iter().any(|notice| n.wanted(notice)))
}

pub async fn queue(
    notifier: Option<&Notifier>,
    conn: &mut sqlx::AnyConnection,
    notices: impl IntoIterator<Item = Notice>,
) -> Result<bool, sqlx::Error> {
    let Some(notifier) = notifier else {
        return Ok(false);
    };
    let mut queued = false;
    for notice in notices {
        queued |= !notifier.enqueue_in(conn, &notice).await?.is_empty();
    }
    Ok(queued)
}
