//! Runs a [`Plan`]: audit it, terminate on every target concurrently, audit each outcome.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit::{AuditError, Entry, Kind};
use crate::context::Context;
use crate::resolve::{Origin, Plan, Step};
use crate::terminate::{Scope, Session, TerminateOutcome, TerminateRequest};

/// An action that could not be carried out or recorded.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The audit trail refused a record; for the plan record, nothing was executed.
    #[error("audit trail unavailable: {0}")]
    Audit(#[from] AuditError),
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

/// Audits `plan`, executes it, audits the outcome and returns the report.
///
/// Nothing is executed unless the plan record is written first, so the trail never misses
/// an action that happened.
pub async fn execute(
    ctx: &Context,
    plan: Plan,
    actor: &str,
) -> Result<ActionReport, PipelineError> {
    let action = Some(plan.action_id);
    let plan_detail = serde_json::to_value(&plan).unwrap_or(Value::Null);
    ctx.audit
        .append(Entry::new(Kind::ActionPlanned, actor, action, plan_detail))
        .await?;

    let targets = match plan.scope {
        Some(scope) => {
            let work = plan
                .steps
                .iter()
                .map(|step| run_step(ctx, step, scope, plan.dry_run));
            futures_util::future::join_all(work).await
        }
        None => Vec::new(),
    };
    let status = if targets.iter().all(TargetReport::ok) {
        Status::Completed
    } else {
        Status::Incomplete
    };
    let report = ActionReport {
        action_id: plan.action_id,
        origin: plan.origin,
        scope: plan.scope,
        dry_run: plan.dry_run,
        status,
        targets,
    };
    ctx.audit
        .append_all(outcome_records(&report, actor))
        .await?;
    Ok(report)
}

async fn run_step(ctx: &Context, step: &Step, scope: Scope, dry_run: bool) -> TargetReport {
    let termination = &ctx.config.termination;
    let request = TerminateRequest {
        logins: step.logins.clone(),
        scope,
        protected: step.protected.clone(),
        dry_run,
        verify_timeout: termination.verify_timeout,
    };
    let limit = termination.timeout + termination.verify_timeout;
    let result = match ctx.targets.get(&step.target) {
        // Resolution only plans configured targets; this guards a config/target mismatch.
        None => Err(format!("target {:?} is not configured", step.target)),
        Some(engine) => match tokio::time::timeout(limit, engine.terminate(&request)).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {limit:?}")),
        },
    };
    let (outcome, error) = match result {
        Ok(outcome) => (outcome, None),
        Err(e) => {
            tracing::warn!(target_id = %step.target, error = %e, "target failed");
            (TerminateOutcome::default(), Some(e))
        }
    };
    TargetReport {
        target: step.target.clone(),
        logins: step.logins.clone(),
        found: outcome.matched.len() + outcome.skipped.len(),
        error,
        outcome,
    }
}

fn session_detail(target: &str, session: &Session, extra: Value) -> Value {
    let mut detail = serde_json::to_value(session).unwrap_or_else(|_| json!({}));
    detail["target"] = json!(target);
    if let (Value::Object(map), Value::Object(more)) = (&mut detail, extra) {
        map.extend(more);
    }
    detail
}

fn outcome_records(report: &ActionReport, actor: &str) -> Vec<Entry> {
    let action = Some(report.action_id);
    let entry = |kind, detail| Entry::new(kind, actor, action, detail);
    let mut entries = Vec::new();
    for t in &report.targets {
        if let Some(error) = &t.error {
            entries.push(entry(
                Kind::TargetFailed,
                json!({"target": t.target, "error": error}),
            ));
        }
        if report.dry_run {
            for s in &t.outcome.matched {
                entries.push(entry(
                    Kind::SessionWouldTerminate,
                    session_detail(&t.target, s, json!({})),
                ));
            }
        }
        for s in &t.outcome.terminated {
            entries.push(entry(
                Kind::SessionTerminated,
                session_detail(&t.target, s, json!({})),
            ));
        }
        for s in &t.outcome.skipped {
            entries.push(entry(
                Kind::SessionSkipped,
                session_detail(&t.target, &s.session, json!({"reason": s.reason})),
            ));
        }
        for s in &t.outcome.failed {
            entries.push(entry(
                Kind::SessionFailed,
                session_detail(&t.target, &s.session, json!({"error": s.error})),
            ));
        }
        for s in &t.outcome.remaining {
            entries.push(entry(
                Kind::SessionRemaining,
                session_detail(&t.target, s, json!({})),
            ));
        }
    }
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
            })
        })
        .collect();
    entries.push(entry(
        Kind::ActionCompleted,
        json!({"status": report.status, "dry_run": report.dry_run, "targets": summary}),
    ));
    entries
}
