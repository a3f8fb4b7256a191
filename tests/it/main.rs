//! sever's integration tests, one binary, grouped by the flow they exercise. Each test runs
//! the real server (in-process on port 0, or as a process) against real databases and the
//! throwaway servers and stand-ins of `sever_testkit` (`tests/kit/`).
//!
//! - `intake`: the doors events come in by (webhook, AWS, SNS, Vault, OpenBao) and what they
//!   refuse.
//! - `terminate`: which sessions end, per engine, and how failures are retried.
//! - `operator`: the CLI.
//! - `audit`: the trail and its integrity.
//! - `console`: the operator console in a real headless Chromium.
//! - `reliability`: faults, fairness, replicas, hostile clients.
//! - `notify`: outbound notifications (Slack, PagerDuty, webhooks) against local receivers.
//! - `support`: the running sever (`TestServer`, `Workspace`), the config builder, the
//!   engine scenarios and the SNS signer; they call sever and the kit.
//!
//! Tests that own process-wide state have binaries of their own: `tests/secrets.rs` (the log
//! check's global subscriber), `tests/store_faults.rs` (a global subscriber too) and
//! `tests/fdlimit.rs` (descriptor limits).

mod audit;
mod console;
mod intake;
mod notify;
mod openapi;
mod operator;
mod reliability;
mod support;
mod terminate;
