//! The command line: the server, and the operator commands that work from the config alone
//! (so they still work when the service is down) and write the same audit records.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};

use crate::action::{ActionReport, Status};
use crate::audit::{AuditError, CheckpointKey, ListFilter, VerifyOptions, VerifyReport, Writer};
use crate::config::{Config, ConfigError};
use crate::context::{Context, ContextError};
use crate::intake::operator::new_token;
use crate::intake::webhook::{SecretError, Verifier};
use crate::resolve::{self, ResolveError, RevocationRequest, TargetSelection};
use crate::runner::{self, RunError};
use crate::terminate::{Session, SessionFilter};

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
    Sessions(SessionsArgs),
    /// Terminate a login's sessions now.
    Revoke(RevokeArgs),
    /// Terminate the sessions of dropped logins, and of expired logins matching a target's
    /// sweep pattern, on the targets with `[targets.<id>.sweep]`.
    Sweep(SweepArgs),
    /// Read and check the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Generate an operator token and the hash to put in `operators[].token_sha256`.
    OperatorToken,
}

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

/// `sever revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The login whose sessions end.
    #[arg(long)]
    pub login: String,
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

/// `sever audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and the checkpoints; exit code 2 names a broken trail (also one
    /// whose tables or columns were altered), 1 means the store could not be reached.
    Verify {
        /// Print the JSON report.
        #[arg(long)]
        json: bool,
        /// Fail when the newest checkpoint is older than this (e.g. `3m`), or there is none:
        /// checkpoints stopped being written, or the newest were deleted with the records.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        max_checkpoint_age: Option<std::time::Duration>,
        /// A checkpoint file kept outside the store (`audit.checkpoint_file`): every checkpoint
        /// in it must be in the store, so a store rolled back wholesale is detected.
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
    },
    /// Write a checkpoint of the trail's head now, as the server does every
    /// `audit.checkpoint_interval` (for deployments without a running server). Exit code 2
    /// when it had to chain around checkpoints it cannot trust.
    Checkpoint,
    /// Show recent records.
    List {
        /// Only this action's records.
        #[arg(long)]
        action: Option<String>,
        /// Only this kind (e.g. `session.terminated`).
        #[arg(long)]
        kind: Option<String>,
        /// How many of the newest records.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write every record as JSON lines, for SIEMs and archives.
    Export {
        /// JSON lines (the only format; required so scripts say what they expect).
        #[arg(long, required = true)]
        jsonl: bool,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
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
            } => serve(config, listen, operator_listen, shutdown).await,
            Command::CheckConfig => check_config(&config),
            Command::Sessions(args) => sessions(config, args).await,
            Command::Revoke(args) => revoke(config, args).await,
            Command::Sweep(args) => sweep(config, args).await,
            Command::Audit(cmd) => audit(config, cmd).await,
            Command::OperatorToken => {
                let (token, hash) = new_token();
                println!("token (give to the operator; shown once): {token}");
                println!("token_sha256 (put in the config):         {hash}");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

async fn serve(
    mut config: Config,
    listen: Option<SocketAddr>,
    operator_listen: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ExitCode, CliError> {
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    if operator_listen.is_some() {
        config.server.operator_listen = operator_listen;
    }
    let listener = bind(config.server.listen).await?;
    let operator_listener = match config.server.operator_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let options = crate::RunOptions {
        operator_listener,
        ..crate::RunOptions::default()
    };
    crate::run_with(config, listener, shutdown, options).await?;
    Ok(ExitCode::SUCCESS)
}

/// Binds `addr`; the error names it.
async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, crate::ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| crate::ServeError::Bind { addr, source })
}

fn check_config(config: &Config) -> Result<ExitCode, CliError> {
    let secrets = config.webhook_secrets()?;
    Verifier::new(&secrets, config.webhooks.tolerance)?;
    config.store.url.load("store.url")?;
    CheckpointKey::load_all(&config.audit)?;
    for (id, target) in &config.targets {
        target.url.load(&format!("targets.{id}.url"))?;
    }
    config.check_own_logins()?;
    let aws = &config.aws;
    for (i, key) in aws.eventbridge.api_keys.iter().enumerate() {
        key.load(&format!("aws.eventbridge.api_keys[{i}]"))?;
    }
    if let Some(keys) = &aws.static_credentials {
        keys.access_key_id
            .load("aws.static_credentials.access_key_id")?;
        keys.secret_access_key
            .load("aws.static_credentials.secret_access_key")?;
    }
    let redacted = |s: &crate::config::SecretRef| format!("<redacted, {}>", s.describe());
    let vault = match &config.vault {
        None => Value::Null,
        Some(v) => {
            let auth = match &v.auth {
                crate::config::VaultAuth::Token { token } => {
                    token.load("vault.auth.token")?;
                    json!({"method": "token", "token": redacted(token)})
                }
                crate::config::VaultAuth::Approle {
                    role_id,
                    secret_id,
                    mount,
                } => {
                    secret_id.load("vault.auth.secret_id")?;
                    json!({"method": "approle", "role_id": role_id, "secret_id": redacted(secret_id), "mount": mount})
                }
                crate::config::VaultAuth::Kubernetes {
                    role,
                    jwt_file,
                    mount,
                } => {
                    json!({"method": "kubernetes", "role": role, "jwt_file": jwt_file, "mount": mount})
                }
            };
            json!({
                "address": v.address,
                "namespace": v.namespace,
                "auth": auth,
                "tls": {"ca_file": v.tls.ca_file, "client_cert_file": v.tls.client_cert_file, "skip_verify": v.tls.skip_verify},
                "subscriber": {"enabled": v.subscriber.enabled, "event_types": v.subscriber.event_types, "namespaces": v.subscriber.namespaces},
                "watcher": v.watcher.as_ref().map(|w| humantime::format_duration(w.interval).to_string()),
            })
        }
    };
    let targets: serde_json::Map<String, Value> = config
        .targets
        .iter()
        .map(|(id, t)| {
            let detail = json!({
                "engine": t.engine,
                "url": t.url.describe(),
                "protected_logins": config.protected_on(id),
                "pool_size": t.pool_size,
                "connect_timeout": humantime::format_duration(t.connect_timeout).to_string(),
                "sweep": t.sweep.as_ref().map(|w| json!({"pattern": w.pattern, "interval": humantime::format_duration(w.interval).to_string()})),
            });
            (id.clone(), detail)
        })
        .collect();
    let credentials: serde_json::Map<String, Value> = config
        .credentials
        .iter()
        .map(|(id, c)| {
            let detail = json!({"description": c.description, "policy": c.policy, "logins": c.logins, "aws": c.aws, "vault": c.vault});
            (id.clone(), detail)
        })
        .collect();
    let plan = json!({
        "server": {
            "listen": config.server.listen,
            "operator_listen": config.server.operator_listen,
            "request_timeout": humantime::format_duration(config.server.request_timeout).to_string(),
            "header_read_timeout": humantime::format_duration(config.server.header_read_timeout).to_string(),
            // null: sized at start to fit the open-file limit.
            "max_connections": config.server.max_connections,
            "operator_max_connections": config.server.operator_max_connections,
            "max_body_bytes": config.server.max_body_bytes,
        },
        "store": config.store.url.describe(),
        "audit": {
            "checkpoint_interval": humantime::format_duration(config.audit.checkpoint_interval).to_string(),
            "checkpoint_key": config.audit.checkpoint_key.as_ref().map(redacted),
            "checkpoint_previous_keys": config.audit.checkpoint_previous_keys.iter().map(redacted).collect::<Vec<_>>(),
            "checkpoint_file": config.audit.checkpoint_file,
            "unkeyed_checkpoints_through": config.audit.unkeyed_checkpoints_through.as_ref().map(|p| json!({"index": p.index, "mac": p.mac})),
        },
        "webhooks": {
            "secrets": config.webhooks.secrets.iter().map(redacted).collect::<Vec<_>>(),
            "tolerance": humantime::format_duration(config.webhooks.tolerance).to_string(),
            "replay_retention": humantime::format_duration(config.webhooks.replay_retention).to_string(),
        },
        "termination": {
            "timeout": humantime::format_duration(config.termination.timeout).to_string(),
            "verify_timeout": humantime::format_duration(config.termination.verify_timeout).to_string(),
        },
        "queue": {
            "concurrency": config.queue.concurrency,
            "per_target": config.queue.per_target_limit(),
            "lease": humantime::format_duration(config.queue.lease).to_string(),
            "retry_for": humantime::format_duration(config.queue.retry_for).to_string(),
            "max_backoff": humantime::format_duration(config.queue.max_backoff).to_string(),
            "poll_interval": humantime::format_duration(config.queue.poll_interval).to_string(),
            "keep_finished": humantime::format_duration(config.queue.keep_finished).to_string(),
        },
        "operators": config.operators.iter().map(|o| json!({"name": o.name, "token_sha256": "<redacted>"})).collect::<Vec<_>>(),
        "targets": targets,
        "credentials": credentials,
        "aws": {
            "region": aws.region,
            "endpoint_url": aws.endpoint_url,
            "credentials": aws.static_credentials.as_ref().map_or_else(
                || json!("default AWS credential chain"),
                |k| json!({"access_key_id": redacted(&k.access_key_id), "secret_access_key": redacted(&k.secret_access_key)}),
            ),
            "eventbridge": {
                "api_keys": aws.eventbridge.api_keys.iter().map(redacted).collect::<Vec<_>>(),
                "header": aws.eventbridge.header,
            },
            "sns": {"topics": aws.sns.topics},
        },
        "vault": vault,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&plan).unwrap_or_default()
    );
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    eprintln!("config OK: every secret loaded");
    Ok(ExitCode::SUCCESS)
}

async fn sessions(config: Config, args: SessionsArgs) -> Result<ExitCode, CliError> {
    let filter = SessionFilter {
        login: args.login,
        database: args.database,
        application_name: args.application_name,
        client_addr: args.client_addr,
        started_before: args.started_before,
        started_after: args.started_after,
    };
    // Before connecting anything: an unknown target, or a name no chosen target could hold.
    resolve::session_filter(&config, args.target.as_deref(), &filter)?;
    let timeout = config.termination.timeout;
    let ctx = Context::build(config).await?;
    let report = ctx
        .targets
        .sessions(args.target.as_deref(), &filter, timeout)
        .await;
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

fn session_table<const N: usize>(leading: [&str; N]) -> Table {
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

fn session_row<const N: usize>(leading: [&str; N], s: &Session) -> Vec<String> {
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

/// Who is at the keyboard, for the audit trail.
fn cli_actor() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    format!("cli:{user}")
}

async fn revoke(config: Config, args: RevokeArgs) -> Result<ExitCode, CliError> {
    let request = RevocationRequest {
        login: args.login,
        targets: if args.all_targets {
            TargetSelection::Keyword("all".into())
        } else {
            TargetSelection::Named(args.targets)
        },
        before: args.before,
        reason: args.reason,
        dry_run: args.dry_run,
    };
    // Plan before connecting anything, so bad input fails fast and leaves no trace but an error.
    let plan = resolve::revocation(&config, &request)?;
    let ctx = Context::build(config).await?;
    let report = runner::execute(&ctx, plan, &cli_actor()).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        print_report(&mut out, &report)?;
    }
    Ok(match report.status {
        Status::Completed => ExitCode::SUCCESS,
        Status::Incomplete => ExitCode::from(EXIT_INCOMPLETE),
    })
}

async fn sweep(config: Config, args: SweepArgs) -> Result<ExitCode, CliError> {
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
            resolve::sweep::config(&config, target).map_err(|e| CliError::Usage(e.to_string()))?;
        }
        named
    };
    let ctx = Context::build(config).await?;
    let actor = cli_actor();
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

fn print_report(out: &mut impl Write, report: &ActionReport) -> std::io::Result<()> {
    let verb = if report.dry_run {
        "would terminate"
    } else {
        "terminated"
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
        for s in &t.outcome.skipped {
            let why = format!("skipped: {}", snake_case(&s.reason));
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
            if report.dry_run {
                t.outcome.matched.len()
            } else {
                t.outcome.terminated.len()
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
fn snake_case(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

async fn audit(config: Config, command: AuditCommand) -> Result<ExitCode, CliError> {
    // Load the key before touching the store, so a bad key fails fast.
    let keys = CheckpointKey::load_all(&config.audit)?;
    let ctx = Context::build(config).await?;
    let mut out = std::io::stdout().lock();
    match command {
        AuditCommand::Verify {
            json,
            max_checkpoint_age,
            checkpoints,
        } => {
            let options = VerifyOptions {
                keys,
                pin: ctx.config.audit.unkeyed_checkpoints_through.clone(),
                max_checkpoint_age,
                checkpoint_file: checkpoints,
                now: None,
            };
            let report = ctx.audit.verify_with(&options).await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                print_verify(&mut out, &report)?;
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_AUDIT_BROKEN)
            })
        }
        AuditCommand::List {
            action,
            kind,
            limit,
            json,
        } => {
            if limit <= 0 {
                return Err(CliError::Usage("--limit must be positive".into()));
            }
            let filter = ListFilter {
                action_id: action,
                kind,
                after_seq: None,
                limit: Some(limit),
            };
            let records = ctx.audit.list(&filter).await?;
            if json {
                for r in records {
                    serde_json::to_writer(&mut out, &r).map_err(std::io::Error::from)?;
                    writeln!(out)?;
                }
            } else {
                let mut table = Table::new();
                table.load_preset(UTF8_BORDERS_ONLY);
                table.set_header(["seq", "at", "kind", "actor", "action", "detail"]);
                for r in records {
                    let mut detail = r.detail.clone();
                    if detail.chars().count() > 100 {
                        detail = detail.chars().take(97).collect::<String>() + "...";
                    }
                    table.add_row([
                        r.seq.to_string(),
                        r.at,
                        r.kind,
                        r.actor,
                        r.action_id.unwrap_or_default(),
                        detail,
                    ]);
                }
                writeln!(out, "{table}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Checkpoint => {
            let mut writer = Writer::from_config(&ctx.config.audit)?;
            let written = writer.write(&ctx.audit).await?;
            for what in &written.tampering {
                eprintln!("audit trail tampered with: {what}");
            }
            let cp = &written.checkpoint;
            writeln!(
                out,
                "checkpoint {} ({}): records up to seq {}, hash {}",
                cp.index, cp.alg, cp.head_seq, cp.head_hash
            )?;
            // Written, but around something it could not trust: the same alert as verify's.
            Ok(if written.tampering.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_AUDIT_BROKEN)
            })
        }
        AuditCommand::Export { jsonl: _, output } => {
            let n = match output {
                Some(path) => {
                    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
                    ctx.audit.export_jsonl(&mut file).await?
                }
                None => ctx.audit.export_jsonl(&mut out).await?,
            };
            eprintln!("exported {n} records");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The human-readable verification result: every problem, or what was checked.
fn print_verify(out: &mut impl Write, report: &VerifyReport) -> std::io::Result<()> {
    let cps = &report.checkpoints;
    if report.ok {
        writeln!(
            out,
            "audit trail OK: {} records, last hash {}",
            report.records, report.last_hash
        )?;
    } else {
        writeln!(
            out,
            "audit trail BROKEN ({} records, {} checkpoints checked):",
            report.records, cps.checked
        )?;
        for p in &report.problems {
            if p.id.is_empty() {
                writeln!(out, "  record seq {}: {}", p.seq, p.what)?;
            } else {
                writeln!(out, "  record seq {} (id {}): {}", p.seq, p.id, p.what)?;
            }
        }
        for p in &cps.problems {
            match p.index {
                Some(index) => writeln!(out, "  checkpoint {index}: {}", p.what)?,
                None => writeln!(out, "  checkpoints: {}", p.what)?,
            }
        }
    }
    if let Some(pin) = &cps.suggested_pin {
        writeln!(
            out,
            "unkeyed checkpoints 1..{index} are accepted only when pinned. If they are sever's \
             own from before audit.checkpoint_key was set (check them against your checkpoint \
             file or logs: anyone who can write the store can make unkeyed checkpoints), add \
             under [audit]:\n  unkeyed_checkpoints_through = {{ index = {index}, mac = \"{mac}\" }}",
            index = pin.index,
            mac = pin.mac
        )?;
    }
    match &cps.newest {
        Some(newest) => writeln!(
            out,
            "checkpoints: {} checked{}; newest {} at {} covers seq {}; {} newer record(s) not yet covered",
            cps.checked,
            if cps.anchored > 0 {
                format!(", {} from the checkpoint file", cps.anchored)
            } else {
                String::new()
            },
            newest.index,
            newest.at,
            newest.head_seq,
            cps.uncovered_records
        ),
        None => writeln!(
            out,
            "checkpoints: none, so truncation of the tail cannot be detected"
        ),
    }
}
