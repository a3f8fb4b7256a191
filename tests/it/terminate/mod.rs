//! Which sessions end and which survive, per engine (PostgreSQL, MySQL/MariaDB, the SQL
//! Server stand-in): the cutoff, sever's own logins, the sweep, retries by error class, and
//! login locks.
//! Uses `crate::support` (server, scenarios, config) and the kit's servers; a few tests call
//! sever's engines directly.

mod cutoff;
mod engines;
mod locks;
mod mysql;
mod mysql_selected;
mod own_login;
mod postgres;
mod retry_classes;
mod selected;
mod session_refs;
mod sqlserver;
mod sweep;
