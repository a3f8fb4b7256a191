//! `sever serve`: runs the server with the command line's listen addresses.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use super::CliError;
use crate::config::Config;

pub(super) async fn serve(
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
pub(super) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, crate::ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| crate::ServeError::Bind { addr, source })
}
