//! The operator's tools outside the HTTP API: the CLI, run as a real process.

mod cli;
