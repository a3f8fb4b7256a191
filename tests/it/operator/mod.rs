//! The operator's tools: the CLI, run as a real process (the `sever` binary, via
//! `crate::support::sever::cli`), login locks and the audit trail through the operator API.

mod actions;
mod audit;
mod cli;
mod drains;
mod locks;
mod policies;
mod schedule;
mod targets;
