//! `sever audit …`: verify, checkpoint, list and export the trail.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};

use super::{CliError, EXIT_AUDIT_BROKEN};
use crate::audit::{CheckpointKey, ListFilter, VerifyOptions, VerifyReport, Writer};
use crate::config::Config;
use crate::context::Context;

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

pub(super) async fn audit(config: Config, command: AuditCommand) -> Result<ExitCode, CliError> {
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
                limit: Some(limit),
                ..ListFilter::default()
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
pub(super) fn print_verify(out: &mut impl Write, report: &VerifyReport) -> std::io::Result<()> {
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
