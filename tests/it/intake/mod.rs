//! The doors: signed events, the AWS paths (Lambda hook, EventBridge, SNS), Vault and OpenBao,
//! and what each refuses (bad input, hostile strings, a flood of abuse, the fuzz corpus).
//! Drives sever from outside (HTTP, CLI) through `crate::support` and `sever_testkit`.

mod abuse;
mod alertmanager;
mod aws;
mod fuzz_corpus;
mod hostile_input;
mod openbao;
mod rejections;
mod sns;
mod vault;
