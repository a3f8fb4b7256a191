//! What an action does: a [`Plan`]'s steps run on their targets (through the work queue,
//! [`crate::queue`]), each outcome turned into audit records and the action's report. A sweep
//! (sessions of dropped or expired logins on one target) runs the same way.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{AuditError, Entry, Kind};
use crate::config::{Config, SweepConfig};
use crate::context::Context;
use crate::queue::{QueueError, Submission, worker};
use crate::resolve::{Origin, Plan, Step};
use crate::terminate::classify::ErrorClass;
use crate::terminate::{
    EngineError, Journal, Scope, Session, SweepRequest, TerminateOutcome, TerminateRequest,
};

/// An action that could not be carried out or recorded.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The audit trail refused a record; for the plan record, nothing was executed.
    #[error("audit trail unavailable: {0}")]
    Audit(#[from] AuditError),
    /// No target with this id is configured.
    #[error("unknown target {0:?}")]
    UnknownTarget(String),
    /// The target has no `[targets.<id>.sweep]` table, so it cannot be swept.
    #[error("target {0:?} has no sweep configured ([targets.{0}.sweep])")]
    NoSweep(String),
    /// The work queue refused the action or could not be read.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The action is stored and still running (a target is being retried); a running sever
    /// finishes it.
    #[error("action {0} is queued and still running (GET /v1/actions/{0} shows its progress)")]
    StillRunning(Uuid),
}

/// Overall result of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every target answered, every signalled session is gone.
    Completed,
    /// A target failed, a session could not be terminated, or one is still connected.
    Incomplete,
}

/// What happened on one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    /// Target id.
    pub target: String,
    /// Logins in scope there.
    pub logins: Vec<String>,
    /// Sessions found in scope (eligible and skipped).
    pub found: usize,
    /// Why the target as a whole failed, if it did.
    pub error: Option<String>,
    /// Sessions by fate.
    #[serde(flatten)]
    pub outcome: TerminateOutcome,
}

impl TargetReport {
    fn ok(&self) -> bool {
        self.error.is_none() && self.outcome.failed.is_empty() && self.outcome.remaining.is_empty()
    }
}

/// The finished result of an action, as returned by `?wait=true`, revocations and the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionReport {
    /// The action's id, also on every audit record it wrote.
    pub action_id: Uuid,
    /// What asked for it.
    #[serde(flatten)]
    pub origin: Origin,
    /// Which sessions were in scope; `null` when the policy terminates nothing.
    pub scope: Option<Scope>,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Completed or incomplete.
    pub status: Status,
    /// Per target.
    pub targets: Vec<TargetReport>,
}

/// Submits `plan` to the queue and carries it out here, waiting for the report. Nothing is
/// executed unless the plan is stored and audited first, so the trail never misses an action
/// that happened.
pub async fn execute(
    ctx: &Context,
    plan: Plan,
    actor: &str,
) -> Result<ActionReport, PipelineError> {
    let work = plan.scope.map(Work::Terminate);
    carry_out(ctx, plan, actor, work, None).await
}

/// The sweep settings of `target`, or why it cannot be swept.
pub fn sweep_config<'a>(
    config: &'a Config,
    target: &str,
) -> Result<&'a SweepConfig, PipelineError> {
    config
        .targets
        .get(target)
        .ok_or_else(|| PipelineError::UnknownTarget(target.to_owned()))?
        .sweep
        .as_ref()
        .ok_or_else(|| PipelineError::NoSweep(target.to_owned()))
}

/// The plan and work of a sweep of `target`.
pub fn sweep_plan(
    config: &Config,
    target: &str,
    dry_run: bool,
) -> Result<(Plan, Work), PipelineError> {
    let pattern = sweep_config(config, target)?.pattern.clone();
    let plan = Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Sweep {
            target: target.to_owned(),
            pattern: pattern.clone(),
        },
        scope: Some(Scope::All),
        dry_run,
        reason: None,
        // No named logins: the sweep finds its own, by pattern and by absence.
        cutoff_defaulted: false,
        steps: vec![Step {
            target: target.to_owned(),
            logins: Vec::new(),
            protected: config.protected_on(target),
        }],
    };
    Ok((plan, Work::Sweep { pattern }))
}

/// Sweeps `target` for sessions of dropped logins and of expired logins matching its sweep
/// pattern: audited like any action (origin `sweep`), each session record saying why
/// (`sweep_reason`). Only targets with a sweep configured can be swept.
pub async fn sweep(
    ctx: &Context,
    target: &str,
    dry_run: bool,
    actor: &str,
) -> Result<ActionReport, PipelineError> {
    let (plan, work) = sweep_plan(&ctx.config, target, dry_run)?;
    // The next sweep is the retry: a sweep of a down target is not retried past it.
    let retry_for = sweep_config(&ctx.config, target)?.interval;
    carry_out(ctx, plan, actor, Some(work), Some(retry_for)).await
}

/// What each step of a plan does on its target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// Terminate the step's logins' sessions in this scope.
    Terminate(Scope),
    /// Sweep for sessions of dropped logins, and of expired logins matching the pattern.
    Sweep {
        /// `LIKE` pattern of the logins checked for expiry.
        pattern: String,
    },
}

/// Submits `plan` and drives its steps in this process until it finishes (steps another
/// process holds are waited for), for callers that need the report: the CLI, sweeps.
async fn carry_out(
    ctx: &Context,
    plan: Plan,
    actor: &str,
    work: Option<Work>,
    retry_for: Option<Duration>,
) -> Result<ActionReport, PipelineError> {
    let action_id = plan.action_id;
    let submission = Submission {
        plan,
        work,
        actor: actor.to_owned(),
        claims: Vec::new(),
        before: Vec::new(),
        retry_for,
    };
    ctx.queue.submit(&ctx.audit, &submission).await?;
    let termination = &ctx.config.termination;
    let budget = 2 * (termination.timeout + termination.verify_timeout);
    match worker::drive(ctx, action_id, budget).await? {
        Some(report) => Ok(report),
        None => Err(PipelineError::StillRunning(action_id)),
    }
}

/// The report of an action from its plan and its finished steps.
pub fn report(plan: &Plan, targets: Vec<TargetReport>) -> ActionReport {
    let status = if targets.iter().all(TargetReport::ok) {
        Status::Completed
    } else {
        Status::Incomplete
    };
    ActionReport {
        action_id: plan.action_id,
        origin: plan.origin.clone(),
        scope: plan.scope,
        dry_run: plan.dry_run,
        status,
        targets,
    }
}

/// Runs one step on its target, within the termination timeouts. A failure comes with its
/// class, which says how (and whether) it is retried: a target that does not answer within
/// the timeouts is [`ErrorClass::Unreachable`].
pub async fn run_step(
    ctx: &Context,
    plan: &Plan,
    step: &Step,
    work: &Work,
    journal: Option<Arc<dyn Journal>>,
) -> (TargetReport, Option<ErrorClass>) {
    let termination = &ctx.config.termination;
    let limit = termination.timeout + termination.verify_timeout;
    let result = match ctx.targets.get(&step.target) {
        // Resolution only plans configured targets; this guards a config/target mismatch.
        None => Err((
            format!("target {:?} is not configured", step.target),
            ErrorClass::Fatal,
        )),
        Some(engine) => {
            let call = async {
                match work {
                    Work::Terminate(scope) => {
                        let request = TerminateRequest {
                            logins: step.logins.clone(),
                            scope: *scope,
                            protected: step.protected.clone(),
                            dry_run: plan.dry_run,
                            verify_timeout: termination.verify_timeout,
                            refine_cutoff: plan.cutoff_defaulted,
                            journal,
                        };
                        engine.terminate(&request).await
                    }
                    Work::Sweep { pattern } => {
                        let request = SweepRequest {
                            pattern: pattern.clone(),
                            protected: step.protected.clone(),
                            dry_run: plan.dry_run,
                            verify_timeout: termination.verify_timeout,
                            journal,
                        };
                        engine.sweep(&request).await
                    }
                }
            };
            match tokio::time::timeout(limit, call).await {
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(e)) => Err((e.to_string(), e.class())),
                Err(_) => Err((
                    EngineError::Timeout(limit).to_string(),
                    ErrorClass::Unreachable,
                )),
            }
        }
    };
    let (outcome, error, class) = match result {
        Ok(outcome) => (outcome, None, None),
        Err((e, class)) => {
            tracing::warn!(target_id = %step.target, error = %e, ?class, "target failed");
            (TerminateOutcome::default(), Some(e), Some(class))
        }
    };
    let report = TargetReport {
        target: step.target.clone(),
        logins: step.logins.clone(),
        found: outcome.matched.len() + outcome.skipped.len(),
        error,
        outcome,
    };
    (report, class)
}

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
