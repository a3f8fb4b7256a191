//! The operator's tools: the CLI, run as a real process (the `sever` binary, via
//! `crate::support::sever::cli`), and login locks through the operator API.

mod actions;
mod cli;
mod drains;
mod locks;
mod policies;
mod schedule;
mod targets;
