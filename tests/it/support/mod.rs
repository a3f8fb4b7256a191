//! Shared helpers of the tests that drive sever: the running server and its workspace
//! (`sever`), the config builder (`config`), the engine scenarios (`scenarios`) and the SNS
//! signer (`sns`). They call sever and `sever_testkit`; the tests call them.

pub mod config;
pub mod scenarios;
pub mod sever;
pub mod sns;
