//! The kit's self-tests, one binary: each kit against its real server (or, for a stand-in,
//! against the client sever uses), so a failing sever test is not a failing kit in disguise.
//! Uses only `sever_testkit`, never sever.

mod mariadb;
mod moto;
mod openbao;
mod pg;
mod tds;
mod tds_activity;
mod tds_logins;
mod vault;
