//! One evaluation of a policy: preview it on each of its targets (threshold, victims, the
//! quarter cap), share `max_per_run` among them, and when anything is picked, plan and
//! carry out one action for the targets that have victims. A target that cannot be read
//! reports its error; the others still run.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Policy, PolicyError, in_window};
use crate::action::{ActionReport, Origin, Plan, Selection, Status, Step};
use crate::audit::{Entry, Kind};
use crate::config::PolicyConfig;
use crate::context::Context;
use crate::notify::{Event, Notice};
use crate::runner::{self, RunError};
use crate::select::{Ending, Pick};
use crate::store::LastEvaluation;
use crate::terminate::Scope;
use crate::terminate::selected::{SelectRequest, Threshold};

/// What evaluated a policy, and how far it may go.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// `schedule`, `manual` or `alert`.
    pub kind: &'static str,
    /// For `alert`: the alert's name and fingerprint.
    pub alert: Option<String>,
    /// Only this one of the policy's targets (an alert's `target_label`).
    pub only_target: Option<String>,
    /// End what it picks, if the policy enforces. Without it (an operator's dry run) it
    /// only reports, and its evaluation is not recorded as the policy's last.
    pub execute: bool,
}

impl Trigger {
    /// The scheduler's evaluation.
    pub fn schedule() -> Self {
        Self {
            kind: "schedule",
            alert: None,
            only_target: None,
            execute: true,
        }
    }

    /// An operator's evaluation: a dry run unless `execute`.
    pub fn manual(execute: bool) -> Self {
        Self {
            kind: "manual",
            alert: None,
            only_target: None,
            execute,
        }
    }
}

/// What came of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Sessions were picked and the action ran, ending them.
    Fired,
    /// Sessions were picked and the action reported them, ending nothing (observing, mode
    /// `report`, or an operator's dry run).
    Observed,
    /// The selector selected nothing.
    NoMatch,
    /// Sessions were selected, but the threshold held on no target.
    BelowThreshold,
    /// An enforcing policy outside its windows: nothing evaluated.
    OutsideWindow,
    /// The policy paused itself: nothing evaluated until an operator resumes it.
    Paused,
    /// No target could be evaluated.
    Error,
}

impl Outcome {
    /// The word reports, the store and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Fired => "fired",
            Outcome::Observed => "observed",
            Outcome::NoMatch => "no_match",
            Outcome::BelowThreshold => "below_threshold",
            Outcome::OutsideWindow => "outside_window",
            Outcome::Paused => "paused",
            Outcome::Error => "error",
        }
    }
}

/// One target's preview.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TargetEvaluation {
    /// Target id.
    pub target: String,
    /// Its load and the threshold, as seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
    /// Victims it could give, within the quarter cap.
    pub victims: usize,
    /// Victims this run takes there, after `max_per_run` is shared out.
    pub allotted: usize,
    /// Why it could not be evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An evaluation and what it did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Evaluation {
    /// The policy.
    pub policy: String,
    /// When it began.
    pub at: DateTime<Utc>,
    /// What came of it.
    pub outcome: Outcome,
    /// Each target's preview.
    pub targets: Vec<TargetEvaluation>,
    /// The action it carried out, when it picked sessions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionReport>,
    /// The action is stored but was still running when the evaluation stopped waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_action: Option<Uuid>,
    /// This evaluation paused the policy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub paused_now: bool,
}

impl Evaluation {
    /// Sessions ended (terminated, or cancelled only).
    pub fn ended(&self) -> usize {
        let Some(report) = &self.action else { return 0 };
        if report.dry_run {
            return 0;
        }
        report
            .targets
            .iter()
            .map(|t| {
                let o = &t.outcome;
                let cancelled_only = o
                    .cancelled
                    .iter()
                    .filter(|c| !o.terminated.iter().any(|t| t.pid == c.pid))
                    .count();
                o.terminated.len() + cancelled_only
            })
            .sum()
    }

    /// Sessions picked as victims.
    pub fn matched(&self) -> usize {
        self.targets.iter().map(|t| t.allotted).sum()
    }
}

/// Evaluates `policy` once, as `trigger` asks, and records it as the policy's last
/// evaluation (unless it was an operator's dry run), pausing the policy when it has ended
/// sessions in too many runs in a row.
pub async fn evaluate(
    ctx: &Context,
    policy: Policy<'_>,
    trigger: &Trigger,
) -> Result<Evaluation, PolicyError> {
    let at = Utc::now();
    let name = policy.name();
    let mut evaluation = match policy {
        Policy::Rule(rule) => evaluate_rule(ctx, rule, trigger, at).await?,
        Policy::Sweep { target, .. } => sweep(ctx, &policy, target, trigger, at).await?,
    };
    crate::telemetry::policy_evaluated(
        &name,
        evaluation.outcome.as_str(),
        evaluation.matched() as u64,
    );
    if evaluation.outcome == Outcome::Fired {
        notify_fired(ctx, &policy, &evaluation).await;
    }
    if trigger.execute {
        let last = LastEvaluation {
            at: crate::store::timestamp(at),
            outcome: evaluation.outcome.as_str().to_owned(),
            action_id: evaluation
                .action
                .as_ref()
                .map(|a| a.action_id)
                .or(evaluation.running_action)
                .map(|id| id.to_string()),
            matched: evaluation.matched() as i64,
            ended: evaluation.ended() as i64,
            error: evaluation.targets.iter().find_map(|t| t.error.clone()),
        };
        let streak = ctx
            .store
            .record_policy_evaluation(&name, &last, policy.pause_after())
            .await?;
        if streak.paused_now {
            evaluation.paused_now = true;
            let reason = format!(
                "it ended sessions in {} evaluations in a row; an operator resumes it",
                streak.runs
            );
            ctx.audit
                .append(Entry::new(
                    Kind::PolicyPaused,
                    policy.actor(),
                    None,
                    serde_json::json!({"policy": name, "runs": streak.runs, "reason": reason}),
                ))
                .await?;
            tracing::warn!(policy = %name, runs = streak.runs, "policy paused itself");
        }
    }
    Ok(evaluation)
}

/// Queues `policy.fired` for a firing: the policy, its targets, what it picked and ended.
/// A notice that cannot be queued is logged; the evaluation stands.
async fn notify_fired(ctx: &Context, policy: &Policy<'_>, evaluation: &Evaluation) {
    let mut notice = Notice::new(Event::PolicyFired);
    notice.policy = Some(evaluation.policy.clone());
    notice.action_id = evaluation
        .action
        .as_ref()
        .map(|a| a.action_id)
        .or(evaluation.running_action);
    notice.targets = evaluation
        .targets
        .iter()
        .filter(|t| t.allotted > 0)
        .map(|t| t.target.clone())
        .collect();
    notice
        .counts
        .insert("picked".into(), evaluation.matched() as u64);
    notice
        .counts
        .insert("ended".into(), evaluation.ended() as u64);
    notice.at = Some(evaluation.at);
    if let Policy::Rule(rule) = policy {
        notice.reason = Some(rule.reason());
    }
    if let Err(e) = ctx.notifier.notify(&notice).await {
        tracing::warn!(policy = %evaluation.policy, error = %e, "cannot queue policy.fired");
    }
}

async fn evaluate_rule(
    ctx: &Context,
    rule: &PolicyConfig,
    trigger: &Trigger,
    at: DateTime<Utc>,
) -> Result<Evaluation, PolicyError> {
    let nothing = |outcome| Evaluation {
        policy: rule.name.clone(),
        at,
        outcome,
        targets: Vec::new(),
        action: None,
        running_action: None,
        paused_now: false,
    };
    let mut targets = rule.target_ids(&ctx.config);
    if let Some(only) = &trigger.only_target {
        if !targets.contains(only) {
            return Err(PolicyError::Invalid(format!(
                "policy {:?} does not cover target {only:?}",
                rule.name
            )));
        }
        targets = vec![only.clone()];
    }
    let enforcing = rule.ends_sessions() && trigger.execute;
    if enforcing {
        let paused = ctx
            .store
            .policy_states()
            .await?
            .into_iter()
            .any(|s| s.name == rule.name && s.paused.is_some());
        if paused {
            return Ok(nothing(Outcome::Paused));
        }
        if !in_window(&ctx.config, rule, at) {
            return Ok(nothing(Outcome::OutsideWindow));
        }
    }
    let pick = Pick {
        victims: rule.victims,
        when: rule.when,
    };
    let ending = rule.ending().unwrap_or(Ending::TERMINATE);
    let previews = targets
        .iter()
        .map(|target| preview(ctx, rule, target, pick, ending));
    let mut evaluated: Vec<TargetEvaluation> = futures_util::future::join_all(previews).await;
    // max_per_run is shared out in target order; the quarter cap is already in each count.
    let mut left = rule.max_per_run.unwrap_or(usize::MAX);
    for t in &mut evaluated {
        t.allotted = t.victims.min(left);
        left -= t.allotted;
    }
    let mut evaluation = nothing(Outcome::NoMatch);
    let picked: BTreeMap<String, usize> = evaluated
        .iter()
        .filter(|t| t.allotted > 0)
        .map(|t| (t.target.clone(), t.allotted))
        .collect();
    evaluation.outcome = if !picked.is_empty() {
        if enforcing {
            Outcome::Fired
        } else {
            Outcome::Observed
        }
    } else if evaluated.iter().all(|t| t.error.is_some()) {
        Outcome::Error
    } else if evaluated
        .iter()
        .any(|t| t.threshold.is_some_and(|th| !th.met && th.selected > 0))
    {
        Outcome::BelowThreshold
    } else {
        Outcome::NoMatch
    };
    evaluation.targets = evaluated;
    if picked.is_empty() {
        return Ok(evaluation);
    }
    let plan = Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Policy {
            policy: rule.name.clone(),
            trigger: trigger.kind.to_owned(),
            alert: trigger.alert.clone(),
            observe: !enforcing,
        },
        scope: Some(Scope::All),
        dry_run: !enforcing,
        reason: Some(rule.reason()),
        cutoff_defaulted: false,
        ending,
        selection: Some(Selection {
            selector: rule.selector.clone(),
            all_logins: rule.all_logins,
            at_most: picked.clone(),
            pick: Some(pick),
        }),
        schedule: None,
        steps: picked
            .keys()
            .map(|target| Step {
                target: target.clone(),
                logins: rule.selector.logins.clone(),
                protected: ctx.config.protected_on(target),
            })
            .collect(),
    };
    let actor = Policy::Rule(rule).actor();
    let mut plan = plan;
    if let Some(ahead) = rule.notify_before.filter(|_| enforcing) {
        // Announced now, acting later: it waits in the queue and selects again then.
        let ask = crate::config::ScheduleRequest {
            notify_before: Some(ahead),
            ..Default::default()
        };
        plan.schedule = crate::resolve::schedule::schedule(&ctx.config, &ask, at)
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        let submission = crate::queue::Submission::new(plan, actor);
        // No claims were taken, so it is never a duplicate.
        if let crate::queue::Submitted::Accepted(id) = runner::schedule::submit(ctx, submission)
            .await
            .map_err(|e| PolicyError::Run(RunError::from(e)))?
        {
            evaluation.running_action = Some(id);
        }
        return Ok(evaluation);
    }
    carry_out(ctx, plan, &actor, &mut evaluation).await?;
    Ok(evaluation)
}

/// Previews `rule` on `target`: changes nothing, bounded by the termination timeout.
async fn preview(
    ctx: &Context,
    rule: &PolicyConfig,
    target: &str,
    pick: Pick,
    ending: Ending,
) -> TargetEvaluation {
    let termination = &ctx.config.termination;
    let request = SelectRequest {
        selector: rule.selector.clone(),
        all_logins: rule.all_logins,
        ending,
        protected: ctx.config.protected_on(target),
        dry_run: true,
        verify_timeout: termination.verify_timeout,
        at_most: None,
        journal: None,
        pick: Some(pick),
    };
    match ctx.preview(target, &request).await {
        Ok(outcome) => TargetEvaluation {
            target: target.to_owned(),
            threshold: outcome.threshold,
            victims: outcome.matched.len(),
            allotted: 0,
            error: None,
        },
        Err(e) => {
            tracing::warn!(policy = %rule.name, target_id = %target, error = %e,
                "policy could not evaluate a target; its other targets still run");
            TargetEvaluation {
                target: target.to_owned(),
                threshold: None,
                victims: 0,
                allotted: 0,
                error: Some(e.to_string()),
            }
        }
    }
}

/// Submits the firing's plan and waits for its report.
async fn carry_out(
    ctx: &Context,
    plan: Plan,
    actor: &str,
    evaluation: &mut Evaluation,
) -> Result<(), PolicyError> {
    match runner::execute(ctx, plan, actor).await {
        Ok(report) => {
            if report.status == Status::Incomplete {
                tracing::warn!(policy = %evaluation.policy, action_id = %report.action_id,
                    "policy action incomplete");
            }
            evaluation.action = Some(report);
            Ok(())
        }
        // Stored and audited: a running sever finishes it.
        Err(RunError::StillRunning(id)) => {
            evaluation.running_action = Some(id);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// A sweep policy's evaluation: the target's sweep, enforcing unless an operator's dry run.
async fn sweep(
    ctx: &Context,
    policy: &Policy<'_>,
    target: &str,
    trigger: &Trigger,
    at: DateTime<Utc>,
) -> Result<Evaluation, PolicyError> {
    let mut evaluation = Evaluation {
        policy: policy.name(),
        at,
        outcome: Outcome::NoMatch,
        targets: Vec::new(),
        action: None,
        running_action: None,
        paused_now: false,
    };
    let report = match runner::sweep(ctx, target, !trigger.execute, &policy.actor()).await {
        Ok(report) => report,
        Err(RunError::StillRunning(id)) => {
            evaluation.running_action = Some(id);
            evaluation.outcome = Outcome::Fired;
            return Ok(evaluation);
        }
        Err(e) => return Err(e.into()),
    };
    let t = report.targets.first();
    let picked = t.map_or(0, |t| t.outcome.matched.len());
    evaluation.targets.push(TargetEvaluation {
        target: target.to_owned(),
        threshold: None,
        victims: picked,
        allotted: picked,
        error: t.and_then(|t| t.error.clone()),
    });
    evaluation.outcome = match (picked, report.dry_run) {
        (0, _) if t.is_some_and(|t| t.error.is_some()) => Outcome::Error,
        (0, _) => Outcome::NoMatch,
        (_, true) => Outcome::Observed,
        (_, false) => Outcome::Fired,
    };
    evaluation.action = Some(report);
    Ok(evaluation)
}
