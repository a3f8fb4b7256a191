//! The `sever` binary: parses arguments and hands over to [`sever::cli`].

use std::process::ExitCode;

use clap::Parser;
use sever::cli::{Cli, EXIT_USAGE};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` go to stdout and succeed; anything else is a refused
            // command line.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    cli.init_tracing();
    match cli.run(shutdown_signal()).await {
        Ok(code) => code,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("Error: {:?}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}

/// Completes on Ctrl-C or SIGTERM (what Kubernetes and Docker send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}
