//! `sever action cancel ID --reason R`: calls off a scheduled action that has not acted,
//! in-process against the store, audited and announced as the API's cancel is.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;

use super::CliError;
use crate::config::Config;
use crate::context::Context;
use crate::http::Actor;

/// `sever action …`.
#[derive(Debug, Subcommand)]
pub enum ActionCommand {
    /// Call off a scheduled action before it acts.
    Cancel {
        /// The action's id.
        id: uuid::Uuid,
        /// Why (recorded, and announced where the action was announced).
        #[arg(long)]
        reason: String,
    },
}

pub(super) async fn action(config: Config, command: ActionCommand) -> Result<ExitCode, CliError> {
    let ActionCommand::Cancel { id, reason } = command;
    let ctx = Context::build(config).await?;
    match crate::operator::actions::cancel(&ctx, id, &Actor::cli().to_string(), &reason).await {
        Ok(_) => {
            writeln!(std::io::stdout().lock(), "action {id} cancelled")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(CliError::Usage(e.to_string())),
    }
}
