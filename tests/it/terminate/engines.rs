//! The behavioural scenarios of `tests/it/support/scenarios.rs`, run for every engine against
//! its real throwaway server (PostgreSQL, MariaDB for the MySQL engine) or, for SQL Server,
//! which cannot be installed here, against the TDS stand-in in `tests/kit/src/tds.rs`.

use crate::support::scenarios;
use sever_testkit::mariadb::TestMariaDb;
use sever_testkit::pg::TestPostgres;
use sever_testkit::tds::TdsStandIn;

/// One `#[tokio::test]` per named scenario of `support::scenarios` and per engine, in modules
/// `postgres`, `mariadb` and `sqlserver_standin`.
macro_rules! for_each_engine {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    scenarios::$scenario(&TestPostgres::start()).await;
                }
            )*
        }
        mod mariadb {
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    scenarios::$scenario(&TestMariaDb::start()).await;
                }
            )*
        }
        mod sqlserver_standin {
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    scenarios::$scenario(&TdsStandIn::start().await).await;
                }
            )*
        }
    };
}

pub(crate) use for_each_engine;

// `rotation_ends_only_older_sessions` runs in `terminate::cutoff`, beside the PostgreSQL
// cutoff tests.
for_each_engine!(revocation_dry_run_then_all, sessions_are_listed_by_login,);
