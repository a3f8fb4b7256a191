//! A step's outcome: finished with its audit records (the last step completing its action),
//! or put back for a retry after a backoff, or given up.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::json;
use sqlx::Row;

use super::{Lease, Queue, QueueError, at, notices, status_name, to_json};
use crate::action::{self, ActionReport, Origin, Plan, Status, TargetReport};
use crate::audit::{Audit, Decision, Entry, Kind, Prepared, Transaction};
use crate::telemetry;
use crate::terminate::classify::{DETERMINISTIC_ATTEMPTS, ErrorClass};

impl Queue {
    /// Records a finished step with its audit records; the last step of an action also
    /// completes the action. `false` if the lease was lost (another process has the step).
    pub async fn finish(
        &self,
        audit: &Audit,
        lease: &Lease,
        report: &TargetReport,
    ) -> Result<bool, QueueError> {
        let done = audit
            .transact(&FinishTx {
                owner: &self.owner,
                lease,
                report,
                notifier: self.notifier.as_deref(),
            })
            .await?;
        let recorded = done.is_some();
        if let (true, Some(notifier)) = (recorded, &self.notifier) {
            notifier.wake();
        }
        if recorded {
            tracing::info!(action_id = %lease.action_id, target_id = %lease.target,
                attempts = lease.attempts, "step finished");
            observe_step(lease, report);
        }
        if let Some(Some(report)) = done {
            observe_action(&lease.plan, &report);
            self.forget_plan(&lease.action_id.to_string());
            self.announce(lease.action_id, report);
        }
        Ok(recorded)
    }

    /// Schedules another attempt of a failed step after a backoff (the last one at the
    /// action's deadline), or gives up and finishes the step as failed: once the deadline
    /// has passed, or, for a failure that will recur ([`ErrorClass::Deterministic`]), after
    /// [`DETERMINISTIC_ATTEMPTS`] attempts.
    pub async fn retry(
        &self,
        audit: &Audit,
        lease: &Lease,
        report: TargetReport,
        class: ErrorClass,
    ) -> Result<bool, QueueError> {
        let error = report.error.clone().unwrap_or_default();
        let now = Utc::now();
        let given_up = if class == ErrorClass::Deterministic
            && lease.attempts >= DETERMINISTIC_ATTEMPTS
            && lease.deadline < super::never()
        {
            Some(format!(
                "{error} (gave up after {} attempts: the target refuses this, and retrying \
                 does not change that)",
                lease.attempts
            ))
        } else if (class == ErrorClass::Fatal && lease.deadline < super::never())
            || now >= lease.deadline
        {
            Some(format!(
                "{error} (gave up after {} attempts; retried until {})",
                lease.attempts,
                at(lease.deadline)
            ))
        } else {
            None
        };
        if let Some(given_up) = given_up {
            let mut report = report;
            report.error = Some(given_up);
            return self.finish(audit, lease, &report).await;
        }
        // The last attempt is made at the deadline, not skipped because a backoff overshoots it.
        let backoff = chrono::Duration::from_std(backoff(lease.attempts, self.config.max_backoff))
            .unwrap_or_default();
        let next = (now + backoff).min(lease.deadline);
        let put_back = audit
            .transact(&RetryTx {
                owner: &self.owner,
                lease,
                error: &error,
                class,
                next,
                notifier: self.notifier.as_deref(),
            })
            .await?;
        if let (true, Some(notifier)) = (put_back, &self.notifier) {
            notifier.wake();
        }
        if put_back {
            telemetry::step_retried(&lease.target, class_name(class));
        }
        Ok(put_back)
    }
}

/// Counts what a step recorded just now did to its sessions (dry runs change nothing and
/// count nothing), once per step: a step is recorded finished only once.
fn observe_step(lease: &Lease, report: &TargetReport) {
    let plan = &lease.plan;
    if plan.dry_run {
        return;
    }
    let decisions = action::decisions(&report.outcome, false, plan.ending.mode);
    telemetry::step_sessions(
        &report.target,
        plan.origin.name(),
        decisions.iter().map(|d| d.decision.as_str()),
    );
}

/// Counts a finished action; for a rotation event's action that completed, the time from
/// the event's receipt to now, when its last step was recorded clean. The receipt time is
/// the action id's: a UUIDv7 made when the event was resolved, right after it arrived (for
/// AWS and Vault, after the lookup of the secret or role).
fn observe_action(plan: &Plan, report: &ActionReport) {
    if plan.dry_run {
        return;
    }
    let origin = plan.origin.name();
    telemetry::action_finished(origin, status_name(report.status));
    let from_event = matches!(
        plan.origin,
        Origin::Event { .. } | Origin::Aws { .. } | Origin::Vault { .. }
    );
    if from_event
        && report.status == Status::Completed
        && let Some(received) = plan.action_id.get_timestamp()
    {
        let (secs, nanos) = received.to_unix();
        let received = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
        let took = std::time::SystemTime::now()
            .duration_since(received)
            .unwrap_or_default();
        telemetry::event_to_clean(origin, took);
    }
}

/// Exponential backoff from 500 ms, capped at `max`, with jitter (half to all of it) so
/// failing steps spread out.
pub(super) fn backoff(attempts: i64, max: Duration) -> Duration {
    let exp = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(19);
    let full = Duration::from_millis(500).saturating_mul(1 << exp).min(max);
    full.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// A failure class as stored in `action_steps.failure` and shown in the step's status.
fn class_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Unreachable => "unreachable",
        ErrorClass::Transient => "transient",
        ErrorClass::Deterministic => "deterministic",
        ErrorClass::Fatal => "fatal",
    }
}

/// Marks a step done with its records; completes the action after its last step.
/// Output: `None` if the lease was lost, `Some(Some(report))` if the action finished.
struct FinishTx<'a> {
    owner: &'a str,
    lease: &'a Lease,
    report: &'a TargetReport,
    notifier: Option<&'a crate::notify::Notifier>,
}

impl FinishTx<'_> {
    /// The step's records.
    fn entries(&self) -> Vec<Entry> {
        let lease = self.lease;
        let mut entries =
            action::target_records(self.report, &lease.plan, &lease.actor, lease.action_id);
        if let Some(error) = &self.report.error {
            // The step is finished with an error only when retrying is over or pointless.
            if let Some(last) = entries.iter_mut().find(|e| e.kind == Kind::TargetFailed) {
                last.detail["attempts"] = json!(lease.attempts);
                last.detail["error"] = json!(error);
            }
        }
        entries
    }
}

#[async_trait]
impl Transaction for FinishTx<'_> {
    type Output = Option<Option<ActionReport>>;

    /// The rows of `run`, for an action of one step (which this step finishes) or a step
    /// other steps of its action are still pending after (the store function checks which
    /// holds). The last of several steps needs the others' reports, which only `run` reads.
    fn prepared(&self) -> Option<Prepared<Self::Output>> {
        let lease = self.lease;
        let plan = &lease.plan;
        let only = plan.steps.len() == 1;
        let finished = only.then(|| action::report(plan, vec![self.report.clone()]));
        // Notices a channel takes are queued in their outbox by `run` alone.
        let mut wanted = notices::step(plan, self.report);
        wanted.extend(finished.as_ref().and_then(|r| notices::finished(plan, r)));
        if notices::any_wanted(self.notifier, &wanted) {
            return None;
        }
        let id = lease.action_id.to_string();
        let mut entries = self.entries();
        let mut rows = serde_json::Map::new();
        rows.insert(
            "step".into(),
            json!({
                "action_id": id,
                "target": lease.target,
                "owner": self.owner,
                "attempts": lease.attempts,
                "report": to_json(self.report),
                "last_error": self.report.error,
                "failed": self.report.error.is_some(),
                "others_pending": !only,
            }),
        );
        if let Some(report) = &finished {
            rows.insert(
                "finished".into(),
                json!({
                    "action_id": id,
                    "status": status_name(report.status),
                    "finished_at": at(Utc::now()),
                    "report": to_json(report),
                }),
            );
            entries.push(action::completed_record(report, &lease.actor));
        }
        Some(Prepared {
            rows,
            entries,
            output: Some(finished),
        })
    }

    /// Progress of an accepted action: it finishes even after the store file is lost.
    fn is_new_work(&self) -> bool {
        false
    }

    async fn run(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<Decision<Self::Output>, sqlx::Error> {
        let lease = self.lease;
        let id = lease.action_id.to_string();
        let updated = sqlx::query(
            "UPDATE action_steps SET state = 'done', report = $4, last_error = $5, \
             failure = CASE WHEN $7 = 1 THEN failure ELSE NULL END, journal = NULL, lease_owner = NULL, lease_until = NULL \
             WHERE action_id = $1 AND target = $2 AND lease_owner = $3 AND state = 'pending' \
               AND attempts = $6",
        )
        .bind(&id)
        .bind(&lease.target)
        .bind(self.owner)
        .bind(to_json(self.report))
        .bind(&self.report.error)
        .bind(lease.attempts)
        .bind(i32::from(self.report.error.is_some()))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(Decision::Rollback(None));
        }
        let mut entries = self.entries();
        let pending: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM action_steps WHERE action_id = $1 AND state = 'pending'",
        )
        .bind(&id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
        let step_notices = notices::step(&lease.plan, self.report);
        notices::queue(self.notifier, tx, step_notices).await?;
        if pending > 0 {
            return Ok(Decision::Commit(entries, Some(None)));
        }
        let rows =
            sqlx::query("SELECT report FROM action_steps WHERE action_id = $1 ORDER BY position")
                .bind(&id)
                .fetch_all(&mut **tx)
                .await?;
        let mut targets = Vec::with_capacity(rows.len());
        for row in rows {
            let text: Option<String> = row.try_get("report")?;
            let report: TargetReport = text
                .and_then(|t| serde_json::from_str(&t).ok())
                .ok_or_else(|| sqlx::Error::Protocol("a finished step has no report".into()))?;
            targets.push(report);
        }
        let report = action::report(&lease.plan, targets);
        // (The one-statement commit writes the same columns: `prepared`.)
        sqlx::query(
            "UPDATE actions SET status = $2, finished_at = $3, report = $4 WHERE action_id = $1",
        )
        .bind(&id)
        .bind(status_name(report.status))
        .bind(at(Utc::now()))
        .bind(to_json(&report))
        .execute(&mut **tx)
        .await?;
        entries.push(action::completed_record(&report, &lease.actor));
        notices::queue(self.notifier, tx, notices::finished(&lease.plan, &report)).await?;
        Ok(Decision::Commit(entries, Some(Some(report))))
    }
}

/// Puts a failed step back for a later attempt; the first failure is audited.
struct RetryTx<'a> {
    owner: &'a str,
    lease: &'a Lease,
    error: &'a str,
    class: ErrorClass,
    next: DateTime<Utc>,
    notifier: Option<&'a crate::notify::Notifier>,
}

#[async_trait]
impl Transaction for RetryTx<'_> {
    type Output = bool;

    /// Progress of an accepted action: it finishes even after the store file is lost.
    fn is_new_work(&self) -> bool {
        false
    }

    async fn run(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<Decision<bool>, sqlx::Error> {
        let lease = self.lease;
        let updated = sqlx::query(
            "UPDATE action_steps SET next_attempt_at = $4, last_error = $5, failure = $7, \
             lease_owner = NULL, lease_until = NULL \
             WHERE action_id = $1 AND target = $2 AND lease_owner = $3 AND state = 'pending' \
               AND attempts = $6",
        )
        .bind(lease.action_id.to_string())
        .bind(&lease.target)
        .bind(self.owner)
        .bind(at(self.next))
        .bind(self.error)
        .bind(lease.attempts)
        .bind(class_name(self.class))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(Decision::Rollback(false));
        }
        // One record when a target starts failing, not one per attempt: the attempts are
        // visible in GET /v1/actions/{id}, and the final outcome is audited either way.
        let entries = if lease.deadline >= super::never() {
            // A step that never gives up (a lock's or a drain's restore) is loud at every
            // tenth failure: `target.failed`, though it goes on being retried, so a login or
            // database left locked is never only a line in readiness (and a lock's restore
            // notifies `lock.restore_failed` as often).
            if lease.attempts % 10 == 1 {
                let restore =
                    notices::restore_failed(&lease.plan, &lease.target, self.error, lease.attempts);
                notices::queue(self.notifier, tx, restore).await?;
                vec![Entry::new(
                    Kind::TargetFailed,
                    &lease.actor,
                    Some(lease.action_id),
                    json!({
                        "target": lease.target,
                        "error": self.error,
                        "attempts": lease.attempts,
                        "next_attempt_at": at(self.next),
                        "retrying": "until it succeeds",
                    }),
                )]
            } else {
                Vec::new()
            }
        } else if lease.attempts == 1 {
            vec![Entry::new(
                Kind::TargetRetrying,
                &lease.actor,
                Some(lease.action_id),
                json!({
                    "target": lease.target,
                    "error": self.error,
                    "next_attempt_at": at(self.next),
                    "retry_until": at(lease.deadline),
                }),
            )]
        } else {
            Vec::new()
        };
        Ok(Decision::Commit(entries, true))
    }
}
