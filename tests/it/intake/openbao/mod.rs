//! Against a real OpenBao: rotations end to end, missing roles and mounts, sever's login
//! methods, the shipped policies, and the sweeper over dynamic credentials.
//! Uses `sever_testkit::openbao` (a real `bao server -dev`) and `crate::support`.

mod auth;
mod flows;
mod missing;
mod policy;
mod sweep;
