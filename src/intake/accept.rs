//! Accepting an event, whatever door it came through: the plan is stored with its
//! idempotency claims and its `event.accepted` record, or the event is noted as needing
//! nothing. No HTTP here: the handlers wrap [`accept`] in a reply, and the Vault subscriber
//! and watcher call it directly.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::action::Plan;
use crate::audit::{Entry, Kind};
use crate::context::Context;
use crate::http::Actor;
use crate::http::error::ApiError;
use crate::queue::{Submission, Submitted};

/// What became of an accepted event.
pub enum Accepted {
    /// The action is stored and will be carried out.
    Started(uuid::Uuid),
    /// The action is stored and waits for its time (its credential announces rotations).
    Scheduled(uuid::Uuid, crate::action::Schedule),
    /// The same event was acted on before, as this action.
    Duplicate(String),
}

/// An idempotency key to take before acting, and what a duplicate means.
#[derive(Debug, Clone)]
pub struct Claim {
    key: String,
    /// `true`: a duplicate is the same event delivered again another way (acknowledge it);
    /// `false`: a duplicate is a replay (refuse it).
    acknowledge_duplicate: bool,
}

impl Claim {
    /// A key whose duplicate is refused as a replay.
    pub fn reject(key: String) -> Self {
        Self {
            key,
            acknowledge_duplicate: false,
        }
    }

    /// A key whose duplicate is acknowledged as already done.
    pub fn acknowledge(key: String) -> Self {
        Self {
            key,
            acknowledge_duplicate: true,
        }
    }
}

/// One event on its way in: who reported it, when it arrived, the keys to claim, and the
/// detail its `event.accepted` (or ignored) record carries. What the three event paths that
/// resolve against an outside system (AWS, Vault) pass along.
pub struct Arrival {
    /// Who reported it.
    pub actor: Actor,
    /// When sever received it.
    pub received_at: DateTime<Utc>,
    /// Idempotency keys to take.
    pub claims: Vec<Claim>,
    /// The record's detail, filled in as the event is resolved.
    pub detail: Value,
}

/// Stores the plan with its idempotency claims and the `event.accepted` record, in one
/// transaction; the queue then carries it out. A duplicate claim is refused (a replay) or
/// reported as [`Accepted::Duplicate`] (the same event delivered another way), as the
/// claim says. Nothing is accepted unless all of it is stored.
pub async fn accept(
    ctx: &Context,
    actor: &Actor,
    claims: Vec<Claim>,
    plan: Plan,
    accepted: Value,
) -> Result<Accepted, ApiError> {
    let action_id = plan.action_id;
    // Cloned only where a rotation may lift locks: accepting an event is a hot path.
    let schedule = plan.schedule.clone().filter(|s| !s.expired);
    let rotation = crate::operator::locks::lifting_credential(&ctx.config, &plan)
        .is_some()
        .then(|| plan.clone());
    let submission = Submission {
        plan,
        actor: actor.to_string(),
        claims: claims.iter().map(|c| c.key.clone()).collect(),
        before: vec![Entry::new(
            Kind::EventAccepted,
            actor,
            Some(action_id),
            accepted.clone(),
        )],
        retry_for: None,
        due: None,
        never_give_up: false,
    };
    // A rotation its credential schedules waits for its time, announced ahead.
    match crate::runner::schedule::submit(ctx, submission).await {
        Ok(Submitted::Accepted(action_id)) => {
            count(actor, "accepted");
            let actor = actor.to_string();
            tracing::info!(%action_id, actor = actor.as_str(), "event accepted");
            // Only where a credential's config asks for it (off by default: one signed event
            // must not lift an incident lock).
            if let Some(rotation) = &rotation {
                crate::operator::locks::lift_for_rotation(ctx, rotation).await;
            }
            Ok(match schedule {
                Some(schedule) => Accepted::Scheduled(action_id, schedule),
                None => Accepted::Started(action_id),
            })
        }
        Ok(Submitted::Duplicate { index, action_id }) => {
            let claim = &claims[index];
            if !claim.acknowledge_duplicate {
                return Err(ApiError::Replayed { action_id });
            }
            let entry = Entry::new(
                Kind::EventDuplicate,
                actor,
                None,
                json!({"key": claim.key, "first_action_id": action_id, "event": accepted}),
            );
            ctx.audit
                .append(entry)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            count(actor, "duplicate");
            Ok(Accepted::Duplicate(action_id))
        }
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

/// Audits an event that needs nothing done.
pub async fn note(
    ctx: &Context,
    actor: &Actor,
    kind: Kind,
    reason: &str,
    mut detail: Value,
) -> Result<(), ApiError> {
    detail["reason"] = json!(reason);
    let entry = Entry::new(kind, actor, None, detail);
    ctx.audit
        .append(entry)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    count(actor, "ignored");
    let actor = actor.to_string();
    tracing::info!(actor = actor.as_str(), kind = kind.as_str(), %reason, "event needs no action");
    Ok(())
}

/// Counts an event taken in by its intake; refusals and failures are counted where they are
/// recorded (`http::refusal`, [`super::Intake::refused`]).
fn count(actor: &Actor, outcome: &'static str) {
    if let Some(source) = actor.event_source() {
        crate::telemetry::event_received(source, outcome);
    }
}
