//! `sever targets`: every configured target probed now, as `GET /v1/targets` answers.

use std::io::Write;
use std::process::ExitCode;

use super::{CliError, EXIT_INCOMPLETE};
use crate::config::Config;
use crate::context::Context;

/// Probes every target and prints one line each (or the JSON `GET /v1/targets` gives);
/// exits [`EXIT_INCOMPLETE`] when one is unreachable.
pub(super) async fn targets(config: Config, json: bool) -> Result<ExitCode, CliError> {
    let ctx = Context::build(config).await?;
    let list = crate::operator::targets::list(&ctx).await;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &list).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        for t in &list.targets {
            let engine = t.engine.as_str();
            match (&t.error, t.latency_ms) {
                (Some(error), _) => writeln!(out, "{} ({engine}): unreachable: {error}", t.id)?,
                (None, latency) => writeln!(
                    out,
                    "{} ({engine}): up in {:.1} ms, {} client session(s){}",
                    t.id,
                    latency.unwrap_or_default(),
                    t.sessions.unwrap_or_default(),
                    t.connection_limit
                        .map(|l| format!(" of {l} allowed"))
                        .unwrap_or_default(),
                )?,
            }
        }
    }
    Ok(if list.targets.iter().all(|t| t.reachable) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INCOMPLETE)
    })
}
