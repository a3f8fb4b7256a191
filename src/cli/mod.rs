//! The command line: the server, and the operator commands that work from the config alone
//! (so they still work when the service is down) and write the same audit records.
//!
//! One file per verb group: [`serve`], [`check`] (`check-config`, `operator-token`), [`sessions`],
//! [`targets`], [`revoke`] (`revoke`, `sweep`) and [`audit`]. The CLI may call everything below it (the
//! server through `crate::run_with`, the operator functions, the runner); nothing calls it but `main`.

mod actions;
mod audit;
mod check;
mod drains;
mod locks;
mod policies;
mod revoke;
mod serve;
mod sessions;
mod targets;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::audit::AuditError;
use crate::config::{Config, ConfigError};
use crate::context::ContextError;
use crate::intake::webhook::SecretError;
use crate::resolve::ResolveError;
use crate::runner::RunError;

pub use self::audit::AuditCommand;
pub use self::revoke::{RevokeArgs, SweepArgs};
pub use self::sessions::SessionsArgs;

/// Exit code when `audit verify` finds a problem.
pub const EXIT_AUDIT_BROKEN: u8 = 2;
/// Exit code when an action did not complete on every target.
pub const EXIT_INCOMPLETE: u8 = 3;
/// Exit code when the command line was refused before anything was done: a malformed or
/// missing argument, an unknown target, a protected login, a name no chosen target could
/// hold (`EX_USAGE` of sysexits.h).
pub const EXIT_USAGE: u8 = 64;

/// Command-line failures.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A webhook secret is malformed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Start-up failed.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// The request cannot be planned.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The action could not be recorded.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The audit trail failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] crate::ServeError),
    /// Terminal or file I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An argument is invalid.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The process exit code for this failure: [`EXIT_USAGE`] when the input was refused
    /// before anything was done, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Resolve(_) => EXIT_USAGE,
            _ => 1,
        }
    }
}

/// sever: terminates database sessions that outlive a credential rotation or revocation.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Config file (TOML). Without one, embedded defaults apply: SQLite store ./sever.db,
    /// listening on 127.0.0.1:8080, no targets.
    #[arg(long, short, env = "SEVER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SEVER_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Dependency log targets that print secrets at TRACE, each capped at a level that does not,
/// whatever `SEVER_LOG` asks for: tungstenite logs the raw websocket handshake request,
/// headers and all, and the Vault event subscription sends `X-Vault-Token` in it.
const SECRET_BEARING_TARGETS: &[&str] = &["tungstenite::handshake::client=debug"];

/// Applies [`SECRET_BEARING_TARGETS`] to `filter`; a directive for the same target in
/// `filter` is replaced. Embedders that install their own subscriber should use it too.
pub fn cap_secret_bearing_targets(
    mut filter: tracing_subscriber::EnvFilter,
) -> tracing_subscriber::EnvFilter {
    for directive in SECRET_BEARING_TARGETS {
        filter = filter.add_directive(directive.parse().expect("a valid directive"));
    }
    filter
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve {
        /// Listen address, overriding `server.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Separate address for the operator API, overriding `server.operator_listen`.
        #[arg(long)]
        operator_listen: Option<SocketAddr>,
    },
    /// Validate the config, load every secret, and print the resolved plan (secrets redacted).
    CheckConfig,
    /// List sessions on the configured targets.
    Sessions(Box<SessionsArgs>),
    /// Probe every configured target: reachable, latency, client sessions, connection limit.
    Targets {
        /// Print JSON (as `GET /v1/targets` answers) instead of a line per target.
        #[arg(long)]
        json: bool,
    },
    /// Terminate a login's sessions now.
    Revoke(Box<RevokeArgs>),
    /// Terminate the sessions of dropped logins, and of expired logins matching a target's
    /// sweep pattern, on the targets with `[targets.<id>.sweep]`.
    Sweep(SweepArgs),
    /// Keep a login out of targets with `locks = true` for a while, ending its sessions.
    Lock(Box<locks::LockArgs>),
    /// Lift a login lock before its expiry.
    Unlock(locks::UnlockArgs),
    /// List login locks.
    Locks(locks::LocksArgs),
    /// Keep one database clear for a while: refuse new connections, end its sessions.
    Drain(Box<drains::DrainArgs>),
    /// Re-open a drained database before its expiry.
    Undrain(drains::UndrainArgs),
    /// List database drains.
    Drains(drains::DrainsArgs),
    /// Read and check the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Scheduled actions: call one off before it acts.
    #[command(subcommand)]
    Action(actions::ActionCommand),
    /// Session policies: list them, evaluate one now, resume a paused one.
    #[command(subcommand)]
    Policy(policies::PolicyCommand),
    /// Generate an operator token and the hash to put in `operators[].token_sha256`.
    OperatorToken,
    /// Print the OpenAPI 3.1 document of the HTTP API (as `GET /openapi.json` serves it).
    Openapi,
}

impl Cli {
    /// Loads the config this invocation names (or the embedded defaults).
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        match &self.config {
            Some(path) => Config::load(path),
            None => Config::parse(""),
        }
    }

    /// Sets up logging to standard error.
    pub fn init_tracing(&self) {
        let filter = cap_secret_bearing_targets(
            tracing_subscriber::EnvFilter::try_from_env("SEVER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(crate::logging::ansi_wanted());
        match self.log_format {
            // Request content reaches log fields: escaped, so it cannot forge or rewrite lines.
            LogFormat::Text => builder.fmt_fields(crate::logging::escaping_fields()).init(),
            // JSON strings escape control characters already.
            LogFormat::Json => builder.json().with_ansi(false).init(),
        }
    }

    /// Runs the command; `shutdown` ends `serve`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<ExitCode, CliError> {
        crate::install_crypto_provider();
        let config = self.load_config()?;
        match self.command {
            Command::Serve {
                listen,
                operator_listen,
            } => serve::serve(config, listen, operator_listen, shutdown).await,
            Command::CheckConfig => check::check_config(&config).await,
            Command::Sessions(args) => sessions::sessions(config, *args).await,
            Command::Targets { json } => targets::targets(config, json).await,
            Command::Revoke(args) => revoke::revoke(config, *args).await,
            Command::Sweep(args) => revoke::sweep(config, args).await,
            Command::Lock(args) => locks::lock(config, *args).await,
            Command::Unlock(args) => locks::unlock(config, args).await,
            Command::Locks(args) => locks::locks(config, args).await,
            Command::Drain(args) => drains::drain(config, *args).await,
            Command::Undrain(args) => drains::undrain(config, args).await,
            Command::Drains(args) => drains::drains(config, args).await,
            Command::Audit(cmd) => audit::audit(config, cmd).await,
            Command::Policy(cmd) => policies::policy(config, cmd).await,
            Command::Action(cmd) => actions::action(config, cmd).await,
            Command::OperatorToken => Ok(check::operator_token()),
            Command::Openapi => Ok(check::openapi()),
        }
    }
}
