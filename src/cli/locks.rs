//! `sever lock`, `sever unlock` and `sever locks`: login locks from the command line.
//!
//! The lock and its end are stored in the queue like the API's and driven here until they
//! finish; the expiry is a scheduled action that the service carries out when it is due
//! (with no service running, when one next starts).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::revoke::print_report;
use super::{CliError, EXIT_INCOMPLETE};
use crate::action::Status;
use crate::config::Config;
use crate::context::Context;
use crate::http::Actor;
use crate::operator::locks::{LockView, lift, list, take};
use crate::resolve::TargetSelection;
use crate::resolve::locks::LockRequest;
use crate::runner;

/// `sever lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The login to keep out.
    #[arg(long)]
    pub login: String,
    /// A target with `locks = true` (repeat for several).
    #[arg(
        long = "target",
        required_unless_present = "all_targets",
        conflicts_with = "all_targets"
    )]
    pub targets: Vec<String>,
    /// Every target with `locks = true`.
    #[arg(long)]
    pub all_targets: bool,
    /// How long, e.g. 30m.
    #[arg(long = "for", value_parser = humantime::parse_duration, required_unless_present = "permanent")]
    pub duration: Option<Duration>,
    /// Keep it until lifted (`sever unlock`).
    #[arg(long, conflicts_with = "duration")]
    pub permanent: bool,
    /// Only lock; leave the login's sessions connected.
    #[arg(long)]
    pub no_terminate: bool,
    /// Why (recorded in the audit trail).
    #[arg(long)]
    pub reason: String,
    /// Print the JSON report.
    #[arg(long)]
    pub json: bool,
    /// When to act, if not at once (the service carries it out then).
    #[command(flatten)]
    pub schedule: super::revoke::ScheduleArgs,
}

/// `sever unlock`.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// The lock's id (from `sever lock` or `sever locks`).
    pub id: uuid::Uuid,
    /// Why it is lifted early (recorded in the audit trail).
    #[arg(long)]
    pub reason: String,
    /// Print the JSON report.
    #[arg(long)]
    pub json: bool,
}

/// `sever locks`.
#[derive(Debug, Args)]
pub struct LocksArgs {
    /// Also list ended locks.
    #[arg(long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn refused(e: crate::http::error::ApiError) -> CliError {
    CliError::Usage(e.to_string())
}

pub(super) async fn lock(config: Config, args: LockArgs) -> Result<ExitCode, CliError> {
    let request = LockRequest {
        login: args.login,
        targets: if args.all_targets {
            TargetSelection::Keyword("all".into())
        } else {
            TargetSelection::Named(args.targets)
        },
        reason: args.reason,
        duration: args.duration,
        permanent: args.permanent,
        terminate: !args.no_terminate,
        notify_before: args.schedule.notify_before,
        not_before: args.schedule.not_before,
        window: args.schedule.window.clone(),
        max_wait: args.schedule.max_wait,
        require_announcement: args.schedule.require_announcement,
    };
    // Checked before anything is connected.
    crate::resolve::locks::lock(&config, &request, chrono::Utc::now())?;
    let ctx = Context::build(config).await?;
    let id = take(&ctx, &request, &Actor::cli().to_string())
        .await
        .map_err(refused)?;
    if request.schedule().is_set() {
        return super::revoke::print_scheduled(&ctx, id).await;
    }
    finish(&ctx, id, args.json, &format!("lock {id}")).await
}

pub(super) async fn unlock(config: Config, args: UnlockArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::build(config).await?;
    let id = lift(&ctx, args.id, &args.reason, &Actor::cli().to_string())
        .await
        .map_err(refused)?;
    finish(&ctx, id, args.json, &format!("lock {} lifted", args.id)).await
}

pub(super) async fn locks(config: Config, args: LocksArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::build(config).await?;
    let locks: Vec<LockView> = list(&ctx, None, args.all).await.map_err(refused)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &locks).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for l in &locks {
        writeln!(
            out,
            "{}  {}  {:?}  since {}  until {}  {}  by {}: {}",
            l.lock_id,
            l.target,
            l.login,
            l.since,
            l.until.as_deref().unwrap_or("lifted"),
            l.state,
            l.actor,
            l.reason.escape_debug()
        )?;
    }
    writeln!(out, "{} lock(s)", locks.len())?;
    Ok(ExitCode::SUCCESS)
}

/// Drives action `id` here until it finishes, then prints its report.
pub(super) async fn finish(
    ctx: &Context,
    id: uuid::Uuid,
    json: bool,
    what: &str,
) -> Result<ExitCode, CliError> {
    let termination = &ctx.config.termination;
    let budget = 2 * (termination.timeout + termination.verify_timeout);
    let report = runner::drive(ctx, id, budget)
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    let Some(report) = report else {
        writeln!(
            out,
            "{what}: still running (action {id}); the service will finish it"
        )?;
        return Ok(ExitCode::from(EXIT_INCOMPLETE));
    };
    if json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{what}")?;
        print_report(&mut out, &report)?;
        for t in &report.targets {
            for note in &t.outcome.notes {
                writeln!(out, "  {}: {note}", t.target)?;
            }
        }
    }
    Ok(match report.status {
        Status::Completed | Status::Cancelled => ExitCode::SUCCESS,
        Status::Incomplete | Status::Expired => ExitCode::from(EXIT_INCOMPLETE),
    })
}
