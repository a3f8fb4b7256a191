//! The operator's tools outside the HTTP API: the CLI, run as a real process (the
//! `sever` binary, via `crate::support::sever::cli`).

mod cli;
