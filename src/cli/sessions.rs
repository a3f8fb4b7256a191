//! `sever sessions`: who is connected, as a table or JSON.

use std::io::Write;
use std::process::ExitCode;

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};

use super::{CliError, EXIT_INCOMPLETE};
use crate::config::Config;
use crate::context::Context;
use crate::operator::sessions::ListingQuery;
use crate::select::{AddrBlock, Pattern, Selector, SessionRef, SessionState};
use crate::terminate::Session;

/// The session selector as flags: the same names as the API's fields, in kebab-case; a
/// list flag is repeated (`--logins a --logins b`).
#[derive(Debug, Clone, Args)]
pub struct SelectorArgs {
    /// Only these logins.
    #[arg(long, alias = "login")]
    pub logins: Vec<String>,
    /// Never these logins.
    #[arg(long)]
    pub exclude_logins: Vec<String>,
    /// Only sessions on these databases.
    #[arg(long, alias = "database")]
    pub databases: Vec<String>,
    /// Never sessions on these databases.
    #[arg(long)]
    pub exclude_databases: Vec<String>,
    /// Only these application names (exact, or `*` globs).
    #[arg(long, alias = "application-name", value_parser = pattern)]
    pub application_names: Vec<Pattern>,
    /// Never these application names (exact, or `*` globs).
    #[arg(long, value_parser = pattern)]
    pub exclude_application_names: Vec<Pattern>,
    /// Only these client addresses or CIDR blocks.
    #[arg(long, alias = "client-addr")]
    pub client_addrs: Vec<AddrBlock>,
    /// Only sessions that connected before this time (RFC 3339).
    #[arg(long)]
    pub started_before: Option<DateTime<Utc>>,
    /// Only sessions that connected at or after this time (RFC 3339).
    #[arg(long)]
    pub started_after: Option<DateTime<Utc>>,
    /// Only sessions in these states (active, idle, idle_in_transaction,
    /// idle_in_transaction_aborted).
    #[arg(long, value_parser = state)]
    pub states: Vec<SessionState>,
    /// Only sessions idle at least this long (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_for: Option<Duration>,
    /// Only sessions running their statement at least this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub active_for: Option<Duration>,
    /// Only sessions with a transaction open at least this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub in_transaction_for: Option<Duration>,
    /// Only these single sessions, PID@START with START the backend_start the listing shows
    /// (RFC 3339); PID alone on MySQL and MariaDB, which record no start.
    #[arg(long = "sessions", alias = "session", value_name = "PID[@START]", value_parser = session_ref)]
    pub sessions: Vec<SessionRef>,
}

fn pattern(s: &str) -> Result<Pattern, String> {
    Ok(Pattern::new(s))
}

fn session_ref(s: &str) -> Result<SessionRef, String> {
    s.parse()
}

fn state(s: &str) -> Result<SessionState, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|e| e.to_string())
}

impl From<SelectorArgs> for Selector {
    fn from(a: SelectorArgs) -> Self {
        Selector {
            logins: a.logins,
            exclude_logins: a.exclude_logins,
            databases: a.databases,
            exclude_databases: a.exclude_databases,
            application_names: a.application_names,
            exclude_application_names: a.exclude_application_names,
            client_addrs: a.client_addrs,
            started_before: a.started_before,
            started_after: a.started_after,
            states: a.states,
            idle_for: a.idle_for,
            active_for: a.active_for,
            in_transaction_for: a.in_transaction_for,
            sessions: a.sessions,
        }
    }
}

/// `sever sessions`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// Only this target.
    #[arg(long)]
    pub target: Option<String>,
    /// Which sessions.
    #[command(flatten)]
    pub selector: SelectorArgs,
    /// Show each session's statement text (it can hold personal data).
    #[arg(long)]
    pub include_query: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn sessions(config: Config, args: SessionsArgs) -> Result<ExitCode, CliError> {
    let query = ListingQuery {
        target: args.target,
        selector: args.selector.into(),
        include_query: args.include_query,
    };
    // Before connecting anything: an unknown target, a name no chosen target could hold, or
    // a field its engine cannot evaluate.
    crate::operator::sessions::check(&config, &query)?;
    let ctx = Context::build(config).await?;
    let report = crate::operator::sessions::list(&ctx, &query)
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        for s in &report.summary {
            writeln!(
                out,
                "{} {}: {} session(s), {} open transaction(s){}, {} session(s) blocked by them",
                s.target,
                s.login.as_deref().unwrap_or("(unknown login)"),
                s.sessions,
                s.open_transactions,
                s.oldest_xact_start
                    .map(|t| format!(" (oldest since {})", t.to_rfc3339()))
                    .unwrap_or_default(),
                s.blocked_sessions
            )?;
        }
        let mut table = Table::new();
        table.load_preset(UTF8_BORDERS_ONLY);
        table.set_header([
            "target",
            "pid",
            "login",
            "database",
            "application",
            "client",
            "started",
            "state",
            "transaction since",
            "waits for",
            "blocked by",
            "blocking",
        ]);
        for s in &report.sessions {
            let mut row = session_row([s.target.as_str()], &s.session);
            row.extend([
                s.impact
                    .xact_start
                    .map_or_else(|| "-".into(), |t| t.to_rfc3339()),
                s.impact.wait_event.clone().unwrap_or_else(|| "-".into()),
                if s.impact.blocked_by.is_empty() {
                    "-".into()
                } else {
                    s.impact
                        .blocked_by
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
                s.impact.blocking.to_string(),
            ]);
            table.add_row(row);
        }
        writeln!(out, "{table}")?;
        writeln!(out, "{} session(s)", report.sessions.len())?;
        for u in &report.unknown {
            writeln!(
                out,
                "target {} pid {} spared: {}",
                u.target, u.pid, u.reason
            )?;
        }
        for e in &report.errors {
            writeln!(out, "target {} failed: {}", e.target, e.error)?;
        }
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INCOMPLETE)
    })
}

pub(super) fn session_table<const N: usize>(leading: [&str; N]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    let mut header: Vec<&str> = leading.to_vec();
    header.extend([
        "pid",
        "login",
        "database",
        "application",
        "client",
        "started",
        "state",
    ]);
    table.set_header(header);
    table
}

pub(super) fn session_row<const N: usize>(leading: [&str; N], s: &Session) -> Vec<String> {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut row: Vec<String> = leading.iter().map(|v| (*v).to_owned()).collect();
    row.extend([
        s.pid.to_string(),
        s.login
            .clone()
            .unwrap_or_else(|| format!("(dropped, oid {})", s.login_id.as_deref().unwrap_or("?"))),
        dash(&s.database),
        dash(&s.application_name),
        dash(&s.client_addr),
        s.backend_start
            .map_or_else(|| "-".into(), |t| t.to_rfc3339()),
        dash(&s.state),
    ]);
    row
}
