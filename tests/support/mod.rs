#![allow(dead_code)]
//! Shared helpers for the integration tests. Include with `mod support;`.

pub mod certs;
pub mod mariadb;
pub mod moto;
pub mod openbao;
pub mod pg;
pub mod proxy;
pub mod scenarios;
pub mod sever;
pub mod sns;
pub mod tds;
pub mod vault;
