//! `sever drain`, `sever undrain` and `sever drains`: database drains from the command line.
//!
//! As for locks, the drain and its end are stored in the queue like the API's and driven
//! here until they finish; the re-open is a scheduled action that the service carries out
//! when it is due (with no service running, when one next starts). clap cannot prefix a
//! flattened argument group, so `except` takes its two convertible fields only:
//! `--except-logins` and `--except-application-names`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::CliError;
use super::locks::finish;
use crate::config::Config;
use crate::context::Context;
use crate::http::Actor;
use crate::operator::drains::{DrainView, lift, list, take};
use crate::resolve::drains::DrainRequest;
use crate::select::{Mode, Pattern, Selector};

/// `sever drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The target (with `locks = true`).
    #[arg(long)]
    pub target: String,
    /// The database to keep clear.
    #[arg(long)]
    pub database: String,
    /// How long, e.g. 15m.
    #[arg(long = "for", value_parser = humantime::parse_duration, required_unless_present = "permanent")]
    pub duration: Option<Duration>,
    /// Keep it until lifted (`sever undrain`).
    #[arg(long, conflicts_with = "duration")]
    pub permanent: bool,
    /// How sessions end: terminate or graceful (with --grace).
    #[arg(long, value_parser = parse_mode, default_value = "terminate")]
    pub mode: Mode,
    /// How long graceful lets statements and transactions finish, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub grace: Option<Duration>,
    /// Spare these logins' sessions (repeat for several).
    #[arg(long)]
    pub except_logins: Vec<String>,
    /// Spare sessions of these application names (exact, or `*` globs).
    #[arg(long, value_parser = pattern)]
    pub except_application_names: Vec<Pattern>,
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

/// `sever undrain`.
#[derive(Debug, Args)]
pub struct UndrainArgs {
    /// The drain's id (from `sever drain` or `sever drains`).
    pub id: uuid::Uuid,
    /// Why it is lifted early (recorded in the audit trail).
    #[arg(long)]
    pub reason: String,
    /// Print the JSON report.
    #[arg(long)]
    pub json: bool,
}

/// `sever drains`.
#[derive(Debug, Args)]
pub struct DrainsArgs {
    /// Also list ended drains.
    #[arg(long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_mode(word: &str) -> Result<Mode, String> {
    serde_json::from_value(serde_json::Value::String(word.to_owned()))
        .map_err(|_| format!("{word:?} is not terminate or graceful"))
}

fn pattern(s: &str) -> Result<Pattern, String> {
    Ok(Pattern::new(s))
}

fn refused(e: crate::http::error::ApiError) -> CliError {
    CliError::Usage(e.to_string())
}

pub(super) async fn drain(config: Config, args: DrainArgs) -> Result<ExitCode, CliError> {
    let request = DrainRequest {
        target: args.target,
        database: args.database,
        reason: args.reason,
        duration: args.duration,
        permanent: args.permanent,
        mode: args.mode,
        grace: args.grace,
        except: Selector {
            logins: args.except_logins,
            application_names: args.except_application_names,
            ..Selector::default()
        },
        lock_accounts: false,
        notify_before: args.schedule.notify_before,
        not_before: args.schedule.not_before,
        window: args.schedule.window.clone(),
        max_wait: args.schedule.max_wait,
        require_announcement: args.schedule.require_announcement,
    };
    // Checked before anything is connected.
    crate::resolve::drains::drain(&config, &request, chrono::Utc::now())?;
    let ctx = Context::build(config).await?;
    let id = take(&ctx, &request, &Actor::cli().to_string())
        .await
        .map_err(refused)?;
    if request.schedule().is_set() {
        return super::revoke::print_scheduled(&ctx, id).await;
    }
    finish(&ctx, id, args.json, &format!("drain {id}")).await
}

pub(super) async fn undrain(config: Config, args: UndrainArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::build(config).await?;
    let id = lift(&ctx, args.id, &args.reason, &Actor::cli().to_string())
        .await
        .map_err(refused)?;
    finish(&ctx, id, args.json, &format!("drain {} lifted", args.id)).await
}

pub(super) async fn drains(config: Config, args: DrainsArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::build(config).await?;
    let drains: Vec<DrainView> = list(&ctx, None, args.all).await.map_err(refused)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &drains).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for d in &drains {
        writeln!(
            out,
            "{}  {}  {:?}  since {}  until {}  {}  by {}: {}",
            d.drain_id,
            d.target,
            d.database,
            d.since,
            d.until.as_deref().unwrap_or("lifted"),
            d.state,
            d.actor,
            d.reason.escape_debug()
        )?;
    }
    writeln!(out, "{} drain(s)", drains.len())?;
    Ok(ExitCode::SUCCESS)
}
