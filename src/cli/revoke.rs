//! `sever revoke` and `sever sweep`: terminate sessions now, in-process, and print the report.

use std::io::Write;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Args;

use super::sessions::{SelectorArgs, session_row, session_table};
use super::{CliError, EXIT_INCOMPLETE};
use crate::action::{ActionReport, ScheduleRequest, Status};
use crate::config::Config;
use crate::context::Context;
use crate::http::Actor;
use crate::resolve::{RevocationRequest, TargetSelection};
use crate::runner;
use crate::select::{Ending, Mode};
use crate::terminate::SkipReason;

/// `sever revoke`: `--login L` (with targets and an optional `--before`) ends that login's
/// sessions at once, the incident path. Any other selector field, `--all-logins` or another
/// `--mode` previews only, printing `DRY RUN: nothing was ended`, until `--execute` is given.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Which sessions (the session selector; `--login` is `--logins`).
    #[command(flatten)]
    pub selector: SelectorArgs,
    /// Reach every login's sessions; needs a selector field that narrows.
    #[arg(long)]
    pub all_logins: bool,
    /// The count the dry run printed; required with `--all-logins --execute`. Refused if
    /// more sessions are selected now.
    #[arg(long)]
    pub expect_count: Option<usize>,
    /// How sessions end: terminate, cancel (the statement only) or graceful (with --grace).
    #[arg(long, value_parser = parse_mode, default_value = "terminate")]
    pub mode: Mode,
    /// How long graceful lets statements and transactions finish, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub grace: Option<std::time::Duration>,
    /// Carry out a selector revocation (without it, one previews only).
    #[arg(long, conflicts_with = "dry_run")]
    pub execute: bool,
    /// A target to act on (repeat for several).
    #[arg(
        long = "target",
        required_unless_present = "all_targets",
        conflicts_with = "all_targets"
    )]
    pub targets: Vec<String>,
    /// Act on every configured target.
    #[arg(long)]
    pub all_targets: bool,
    /// Only sessions that began before this time (RFC 3339); default: all sessions.
    #[arg(long)]
    pub before: Option<DateTime<Utc>>,
    /// Why (recorded in the audit trail).
    #[arg(long)]
    pub reason: String,
    /// Show what would be terminated; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the JSON report instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// When to act, if not at once (the service carries it out then).
    #[command(flatten)]
    pub schedule: ScheduleArgs,
}

/// When an action acts, if not at once: the schedule's fields as flags.
#[derive(Debug, Clone, Default, Args)]
pub struct ScheduleArgs {
    /// Announce this long before acting, e.g. 15m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub notify_before: Option<std::time::Duration>,
    /// Act at or after this time (RFC 3339).
    #[arg(long, conflicts_with = "window")]
    pub not_before: Option<DateTime<Utc>>,
    /// Act when this [[windows]] window is open.
    #[arg(long)]
    pub window: Option<String>,
    /// How long to wait for the window (default 7d).
    #[arg(long, value_parser = humantime::parse_duration, requires = "window")]
    pub max_wait: Option<std::time::Duration>,
    /// Act only if the announcement was delivered by then.
    #[arg(long, requires = "notify_before")]
    pub require_announcement: bool,
}

impl From<ScheduleArgs> for ScheduleRequest {
    fn from(a: ScheduleArgs) -> Self {
        Self {
            notify_before: a.notify_before,
            not_before: a.not_before,
            window: a.window,
            max_wait: a.max_wait,
            require_announcement: a.require_announcement,
        }
    }
}

/// `sever sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// A target to sweep (repeat for several); default: every target with a sweep configured.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Show what would be terminated; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print a JSON array of the reports (one action per target) instead of a summary.
    #[arg(long)]
    pub json: bool,
}

fn parse_mode(word: &str) -> Result<Mode, String> {
    serde_json::from_value(serde_json::Value::String(word.to_owned()))
        .map_err(|_| format!("{word:?} is not terminate, cancel or graceful"))
}

pub(super) async fn revoke(config: Config, args: RevokeArgs) -> Result<ExitCode, CliError> {
    let mut request = RevocationRequest {
        targets: if args.all_targets {
            TargetSelection::Keyword("all".into())
        } else {
            TargetSelection::Named(args.targets)
        },
        selector: args.selector.into(),
        all_logins: args.all_logins,
        before: args.before,
        reason: args.reason,
        dry_run: args.dry_run,
        ending: Ending {
            mode: args.mode,
            grace: args.grace,
        },
        expect_count: args.expect_count,
        schedule: args.schedule.into(),
    };
    // A selector revocation previews until told to act, as sp_kill and -WhatIf do.
    let preview_only = request.uses_selector() && !args.execute;
    request.dry_run |= preview_only;
    // Plan before connecting anything, so bad input fails fast and leaves no trace but an error.
    let mut plan = crate::operator::revocations::plan(&config, &request)?;
    let ctx = Context::build(config).await?;
    crate::operator::revocations::check_count(&ctx, &mut plan, request.expect_count)
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if plan.schedule.is_some() && !plan.dry_run {
        // Stored for the service to carry out at its time; nothing is done here.
        let id = plan.action_id;
        let submission = crate::queue::Submission::new(plan, Actor::cli().to_string());
        runner::schedule::submit(&ctx, submission)
            .await
            .map_err(runner::RunError::from)?;
        return print_scheduled(&ctx, id).await;
    }
    let report = runner::execute(&ctx, plan, &Actor::cli().to_string()).await?;
    let mut out = std::io::stdout().lock();
    if preview_only {
        let count: usize = report.targets.iter().map(|t| t.outcome.matched.len()).sum();
        writeln!(
            out,
            "DRY RUN: nothing was ended. {count} session(s) selected; add --execute{} to act.",
            if args.all_logins {
                format!(" --expect-count {count}")
            } else {
                String::new()
            }
        )?;
    }
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        print_report(&mut out, &report)?;
    }
    Ok(match report.status {
        Status::Completed | Status::Cancelled => ExitCode::SUCCESS,
        Status::Incomplete | Status::Expired => ExitCode::from(EXIT_INCOMPLETE),
    })
}

/// Says when a scheduled action acts (or that it expired), as stored.
pub(super) async fn print_scheduled(ctx: &Context, id: uuid::Uuid) -> Result<ExitCode, CliError> {
    let stored = ctx
        .queue
        .stored_plan(id)
        .await
        .map_err(runner::RunError::from)?;
    let schedule = stored.and_then(|(plan, _, _)| plan.schedule);
    let mut out = std::io::stdout().lock();
    let Some(schedule) = schedule.filter(|s| !s.expired) else {
        writeln!(
            out,
            "action {id} expired: its window does not open within max_wait"
        )?;
        return Ok(ExitCode::from(EXIT_INCOMPLETE));
    };
    writeln!(
        out,
        "action {id} scheduled: acts at {}{}; a running sever carries it out \
         (sever action cancel {id} --reason … calls it off)",
        schedule.act_at,
        schedule
            .announce_at
            .map(|t| format!(", announced at {t}"))
            .unwrap_or_default()
    )?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn sweep(config: Config, args: SweepArgs) -> Result<ExitCode, CliError> {
    // Check every target before connecting anything, so bad input leaves no trace.
    let targets: Vec<String> = if args.targets.is_empty() {
        let all: Vec<String> = config
            .targets
            .iter()
            .filter(|(_, t)| t.sweep.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        if all.is_empty() {
            return Err(CliError::Usage(
                "no target has a sweep configured ([targets.<id>.sweep])".into(),
            ));
        }
        all
    } else {
        let mut named = args.targets;
        named.sort();
        named.dedup();
        for target in &named {
            crate::resolve::sweep::config(&config, target)
                .map_err(|e| CliError::Usage(e.to_string()))?;
        }
        named
    };
    let ctx = Context::build(config).await?;
    let actor = Actor::cli().to_string();
    let work = targets
        .iter()
        .map(|target| runner::sweep(&ctx, target, args.dry_run, &actor));
    let reports = futures_util::future::join_all(work)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &reports).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        for report in &reports {
            print_report(&mut out, report)?;
        }
    }
    Ok(if reports.iter().all(|r| r.status == Status::Completed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INCOMPLETE)
    })
}

pub(super) fn print_report(out: &mut impl Write, report: &ActionReport) -> std::io::Result<()> {
    let cancel = report.ending.mode == Mode::Cancel;
    let verb = match (report.dry_run, cancel) {
        (true, true) => "would cancel",
        (true, false) => "would terminate",
        (false, true) => "cancelled",
        (false, false) => "terminated",
    };
    writeln!(out, "action {} ({:?})", report.action_id, report.status)?;
    let mut table = session_table(["target", "outcome"]);
    for t in &report.targets {
        let listed = if report.dry_run {
            &t.outcome.matched
        } else {
            &t.outcome.terminated
        };
        for s in listed {
            // A sweep says why it chose each session.
            let outcome = match t.outcome.sweep_reasons.get(&s.pid) {
                Some(why) => format!("{verb}: {}", snake_case(why)),
                None => verb.to_owned(),
            };
            table.add_row(session_row([t.target.as_str(), outcome.as_str()], s));
        }
        for s in &t.outcome.cancelled {
            if !cancel && !t.outcome.terminated.iter().any(|e| e.pid == s.pid) {
                table.add_row(session_row([t.target.as_str(), "cancelled"], s));
            }
        }
        for s in &t.outcome.skipped {
            let why = match &s.reason {
                SkipReason::Excluded(rule) => format!("skipped: excluded ({rule})"),
                other => format!("skipped: {}", other.word()),
            };
            table.add_row(session_row([t.target.as_str(), why.as_str()], &s.session));
        }
        for s in &t.outcome.failed {
            table.add_row(session_row([t.target.as_str(), "FAILED"], &s.session));
        }
        for s in &t.outcome.remaining {
            table.add_row(session_row([t.target.as_str(), "STILL CONNECTED"], s));
        }
    }
    writeln!(out, "{table}")?;
    for t in &report.targets {
        write!(
            out,
            "{}: found {}, {verb} {}, skipped {}, failed {}, remaining {}",
            t.target,
            t.found,
            match (report.dry_run, cancel) {
                (true, _) => t.outcome.matched.len(),
                (false, true) => t.outcome.cancelled.len(),
                (false, false) => t.outcome.terminated.len(),
            },
            t.outcome.skipped.len(),
            t.outcome.failed.len(),
            t.outcome.remaining.len()
        )?;
        match &t.error {
            Some(e) => writeln!(out, ", ERROR: {e}")?,
            None => writeln!(out)?,
        }
        for f in &t.outcome.failed {
            writeln!(out, "  pid {}: {}", f.session.pid, f.error)?;
        }
    }
    Ok(())
}

/// A unit enum variant's name as serialised (`own_login`, `login_expired`, …).
pub(super) fn snake_case(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
