//! `sever sessions`: who is connected, as a table or JSON.

use std::io::Write;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};

use super::{CliError, EXIT_INCOMPLETE};
use crate::config::Config;
use crate::context::Context;
use crate::terminate::{Session, SessionFilter};

/// `sever sessions`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// Only this target.
    #[arg(long)]
    pub target: Option<String>,
    /// Only this login.
    #[arg(long)]
    pub login: Option<String>,
    /// Only this database.
    #[arg(long)]
    pub database: Option<String>,
    /// Only this application name.
    #[arg(long)]
    pub application_name: Option<String>,
    /// Only this client address.
    #[arg(long)]
    pub client_addr: Option<String>,
    /// Only sessions that started before this time (RFC 3339).
    #[arg(long)]
    pub started_before: Option<DateTime<Utc>>,
    /// Only sessions that started at or after this time (RFC 3339).
    #[arg(long)]
    pub started_after: Option<DateTime<Utc>>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn sessions(config: Config, args: SessionsArgs) -> Result<ExitCode, CliError> {
    let filter = SessionFilter {
        login: args.login,
        database: args.database,
        application_name: args.application_name,
        client_addr: args.client_addr,
        started_before: args.started_before,
        started_after: args.started_after,
    };
    // Before connecting anything: an unknown target, or a name no chosen target could hold.
    crate::operator::sessions::check(&config, args.target.as_deref(), &filter)?;
    let ctx = Context::build(config).await?;
    let report = crate::operator::sessions::list(&ctx, args.target.as_deref(), &filter).await;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        let mut table = session_table(["target"]);
        for s in &report.sessions {
            table.add_row(session_row([s.target.as_str()], &s.session));
        }
        writeln!(out, "{table}")?;
        writeln!(out, "{} session(s)", report.sessions.len())?;
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
