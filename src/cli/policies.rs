//! `sever policy list|run|resume`: the policies with their state, an evaluation now (a dry
//! run unless `--execute`), and resuming a policy that paused itself. In-process, like the
//! other operator commands, writing the same audit records as the server.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;

use super::{CliError, EXIT_INCOMPLETE};
use crate::action::Status;
use crate::config::Config;
use crate::context::Context;
use crate::http::Actor;
use crate::policy::{self, Outcome, PolicyError, Trigger};

/// `sever policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// List the policies (rules and sweeps) with their last and next evaluation.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a policy now. Without --execute it ends nothing: it prints what it would.
    Run {
        /// The policy's name (`sweep:<target>` for a target's sweep).
        name: String,
        /// End what it picks (if the policy enforces and its window is open).
        #[arg(long)]
        execute: bool,
        /// Print the JSON evaluation.
        #[arg(long)]
        json: bool,
    },
    /// Resume a policy that paused itself.
    Resume {
        /// The policy's name.
        name: String,
    },
}

fn usage(e: PolicyError) -> CliError {
    match e {
        PolicyError::Unknown(_) | PolicyError::Invalid(_) => CliError::Usage(e.to_string()),
        PolicyError::Run(e) => CliError::Run(e),
        PolicyError::Audit(e) => CliError::Audit(e),
        other => CliError::Usage(other.to_string()),
    }
}

pub(super) async fn policy(config: Config, command: PolicyCommand) -> Result<ExitCode, CliError> {
    // Bad names fail before anything is connected.
    if let PolicyCommand::Run { name, .. } | PolicyCommand::Resume { name } = &command {
        policy::find(&config, name).map_err(usage)?;
    }
    let ctx = Context::build(config).await?;
    let mut out = std::io::stdout().lock();
    match command {
        PolicyCommand::List { json } => {
            let views = policy::list(&ctx).await.map_err(usage)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &views).map_err(std::io::Error::from)?;
                writeln!(out)?;
                return Ok(ExitCode::SUCCESS);
            }
            for v in views {
                let last = v.last_evaluation.as_ref().map_or("never".to_owned(), |l| {
                    format!(
                        "{} at {} ({} picked, {} ended)",
                        l.outcome, l.at, l.matched, l.ended
                    )
                });
                writeln!(
                    out,
                    "{} ({}, {}{}) every {}: last {last}; next {}",
                    v.name,
                    v.kind.as_str(),
                    policy::enforcement_word(v.enforcement),
                    if v.paused.is_some() { ", PAUSED" } else { "" },
                    humantime::format_duration(v.interval),
                    v.next_evaluation.as_deref().unwrap_or("not scheduled yet"),
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Run {
            name,
            execute,
            json,
        } => {
            let found = policy::find(&ctx.config, &name).map_err(usage)?;
            let evaluation = policy::evaluate(&ctx, found, &Trigger::manual(execute))
                .await
                .map_err(usage)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &evaluation)
                    .map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                if !execute {
                    writeln!(out, "DRY RUN: nothing was ended; add --execute to act.")?;
                }
                writeln!(
                    out,
                    "policy {}: {} ({} picked, {} ended)",
                    evaluation.policy,
                    evaluation.outcome.as_str(),
                    evaluation.matched(),
                    evaluation.ended()
                )?;
                for t in &evaluation.targets {
                    let error = t.error.as_deref().unwrap_or("");
                    writeln!(out, "  {}: {} picked {error}", t.target, t.allotted)?;
                }
                if let Some(report) = &evaluation.action {
                    super::revoke::print_report(&mut out, report)?;
                }
            }
            let incomplete = evaluation.outcome == Outcome::Error
                || evaluation
                    .action
                    .as_ref()
                    .is_some_and(|r| r.status == Status::Incomplete);
            Ok(if incomplete {
                ExitCode::from(EXIT_INCOMPLETE)
            } else {
                ExitCode::SUCCESS
            })
        }
        PolicyCommand::Resume { name } => {
            let resumed = policy::resume(&ctx, &name, &Actor::cli().to_string())
                .await
                .map_err(usage)?;
            writeln!(
                out,
                "{}",
                if resumed {
                    format!("policy {name} resumed")
                } else {
                    format!("policy {name} was not paused")
                }
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
