//! Scheduled and announced actions: storing one so that it waits in the queue until its
//! time (its steps due then), with its announcement planned before it is accepted; the
//! announcer, which sends each announcement when it is due (once across replicas); calling
//! one off; and the check a step makes when its action required its announcement.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::action::{Origin, Plan};
use crate::audit::{AuditError, Entry, Kind};
use crate::context::Context;
use crate::notify::{Event, Notice};
use crate::queue::{Cancelled, QueueError, Submission, Submitted};

/// How often the announcer looks for announcements that are due.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// Stores `submission` as its plan's schedule says: its steps due when it acts, and its
/// announcement planned first, so an accepted action is never left unannounced. An
/// action whose window never opened within its `max_wait` is stored finished, `expired`,
/// and that is announced.
pub async fn submit(ctx: &Context, mut submission: Submission) -> Result<Submitted, QueueError> {
    let Some(schedule) = submission.plan.schedule.clone() else {
        return ctx.queue.submit(&ctx.audit, &submission).await;
    };
    let id = submission.plan.action_id;
    if !schedule.expired {
        submission.due = Some(
            submission
                .due
                .map_or(schedule.act_at, |d| d.max(schedule.act_at)),
        );
    }
    if let Some(announce_at) = schedule.announce_at {
        ctx.store
            .plan_announcement(&id.to_string(), announce_at, schedule.act_at)
            .await
            .map_err(|e| QueueError::Audit(AuditError::Store(e)))?;
    }
    let submitted = ctx.queue.submit(&ctx.audit, &submission).await?;
    if schedule.expired && matches!(submitted, Submitted::Accepted(_)) {
        let reason = format!(
            "window {:?} did not open within the action's max_wait: nothing was done",
            schedule.window.as_deref().unwrap_or_default()
        );
        announce(
            ctx,
            &submission.plan,
            &submission.actor,
            Event::AnnouncementCancelled,
            Some(reason),
        )
        .await?;
    }
    Ok(submitted)
}

/// Sends every announcement that is due, each once across replicas, until `stop`.
pub async fn run_announcer(ctx: Arc<Context>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(ANNOUNCE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A store that is down would fail every tick: say so once, and once when it recovers.
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match announce_due(&ctx).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("due announcements are sent again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot send due announcements; trying every second");
            }
            Err(e) => tracing::debug!(error = %e, "due announcements still cannot be sent"),
        }
    }
}

async fn announce_due(ctx: &Context) -> Result<(), QueueError> {
    let store_error = |e| QueueError::Audit(AuditError::Store(e));
    let due = ctx
        .store
        .due_announcements(Utc::now(), 100)
        .await
        .map_err(store_error)?;
    for id in due {
        let Ok(action_id) = Uuid::parse_str(&id) else {
            continue;
        };
        // Only for an action that is still waiting: one called off or gone is not announced.
        let Some((plan, actor, status)) = ctx.queue.stored_plan(action_id).await? else {
            ctx.store
                .cancel_announcement(&id)
                .await
                .map_err(store_error)?;
            continue;
        };
        if status != "running" {
            ctx.store
                .cancel_announcement(&id)
                .await
                .map_err(store_error)?;
            continue;
        }
        if !ctx
            .store
            .claim_announcement(&id, Utc::now())
            .await
            .map_err(store_error)?
        {
            continue;
        }
        let ids = announce(ctx, &plan, &actor, Event::AnnouncementMade, None).await?;
        let ids = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
        ctx.store
            .set_announcement_notifications(&id, &ids)
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

/// Queues `event` about `plan`'s action on the notification channels and records it; the
/// outbox ids it went out as. Carries only what the action is about (targets, logins, why,
/// when), never its sessions' client-supplied strings.
async fn announce(
    ctx: &Context,
    plan: &Plan,
    actor: &str,
    event: Event,
    reason: Option<String>,
) -> Result<Vec<Uuid>, QueueError> {
    let mut logins: Vec<String> = plan.steps.iter().flat_map(|s| s.logins.clone()).collect();
    logins.sort();
    logins.dedup();
    let (credential, policy) = match &plan.origin {
        Origin::Event { credential, .. } | Origin::Aws { credential, .. } => {
            (Some(credential.clone()), None)
        }
        Origin::Vault { credential, .. } => (credential.clone(), None),
        Origin::Policy { policy, .. } => (None, Some(policy.clone())),
        _ => (None, None),
    };
    let act_at = plan.schedule.as_ref().map(|s| s.act_at);
    let notice = Notice {
        event: Some(event),
        action_id: Some(plan.action_id),
        credential,
        policy,
        targets: plan.steps.iter().map(|s| s.target.clone()).collect(),
        logins,
        reason: reason.clone().or_else(|| plan.reason.clone()),
        at: Some(Utc::now()),
        act_at,
        ..Notice::default()
    };
    let ids = match ctx.notifier.notify(&notice).await {
        Ok(ids) => ids,
        // Never blocks the action: the record below still says it was meant to go out.
        Err(e) => {
            tracing::warn!(action_id = %plan.action_id, error = %e, "announcement not queued");
            Vec::new()
        }
    };
    let kind = match event {
        Event::AnnouncementCancelled => Kind::AnnouncementCancelled,
        _ => Kind::AnnouncementMade,
    };
    ctx.audit
        .append(Entry::new(
            kind,
            actor,
            Some(plan.action_id),
            json!({"origin": plan.origin.name(), "targets": notice.targets,
                   "logins": notice.logins, "act_at": act_at, "reason": notice.reason,
                   "notifications": ids.len()}),
        ))
        .await?;
    Ok(ids)
}

/// Calls off a scheduled action that has not acted, recording `actor` and `reason`, and
/// announces the cancellation if the action had been announced.
pub async fn cancel(
    ctx: &Context,
    action_id: Uuid,
    actor: &str,
    reason: &str,
) -> Result<Cancelled, QueueError> {
    let cancelled = ctx
        .queue
        .cancel(&ctx.audit, action_id, actor, reason)
        .await?;
    if let Cancelled::Done(done) = &cancelled {
        // A lock's or drain's expiry goes with it: there is nothing left for it to end.
        if let Origin::Lock {
            expiry: Some(expiry),
            ..
        }
        | Origin::Drain {
            expiry: Some(expiry),
            ..
        } = &done.1.origin
        {
            let why = format!("{reason} (its {} was called off)", done.1.origin.name());
            ctx.queue.cancel(&ctx.audit, *expiry, actor, &why).await?;
        }
        let before = ctx
            .store
            .cancel_announcement(&action_id.to_string())
            .await
            .map_err(|e| QueueError::Audit(AuditError::Store(e)))?;
        if before.as_deref() == Some("made") {
            let plan = &done.1;
            announce(
                ctx,
                plan,
                actor,
                Event::AnnouncementCancelled,
                Some(reason.to_owned()),
            )
            .await?;
        }
    }
    Ok(cancelled)
}

/// Why a scheduled action may not act now, or `None` when it may: its window has closed
/// (its first attempts came late, a target being down), or it required its announcement
/// and that was not delivered. Such a step fails for good, recorded, rather than acting
/// outside what was announced.
pub async fn may_not_act(ctx: &Context, plan: &Plan) -> Option<String> {
    let schedule = plan.schedule.as_ref()?;
    if let Some(name) = &schedule.window
        && ctx
            .config
            .window(name)
            .is_some_and(|w| !w.contains(Utc::now()))
    {
        return Some(format!(
            "window {name:?} closed before it could act, so nothing was done"
        ));
    }
    announcement_missing(ctx, plan).await
}

async fn announcement_missing(ctx: &Context, plan: &Plan) -> Option<String> {
    let schedule = plan.schedule.as_ref().filter(|s| s.require_announcement)?;
    let row = match ctx.store.announcement(&plan.action_id.to_string()).await {
        Ok(row) => row,
        Err(e) => return Some(format!("its announcement could not be read: {e}")),
    };
    let ids: Vec<Uuid> = row
        .as_ref()
        .filter(|r| r.state == "made")
        .and_then(|r| r.notifications.as_deref())
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    // Made but queued nowhere (no channel took it, or the process stopped in between)
    // is not delivered.
    let delivered = row.as_ref().is_some_and(|r| r.state == "made")
        && !ids.is_empty()
        && ctx.notifier.delivered(&ids).await.unwrap_or(false);
    (!delivered).then(|| {
        format!(
            "require_announcement: its announcement was not delivered by {}, so nothing was \
             done",
            schedule.act_at
        )
    })
}
