//! Against a real OpenBao: rotations end to end, missing roles and mounts, sever's login
//! methods, the shipped policies, and the sweeper over dynamic credentials.

mod auth;
mod flows;
mod missing;
mod policy;
mod sweep;
