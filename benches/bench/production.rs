//! Scenario 8: the production shape. sever's store is a PostgreSQL cluster of its own, 2 ms
//! away through a delaying proxy, and the target is 2 ms away through another.

use std::time::Duration;

use sever_testkit::pg::TestPostgres;
use sqlx::{Connection, PgConnection};

use crate::proxy::{RoundTrips, delaying_proxy, median_rt, sequential};
use crate::report::{Line, Stats, ratio};
use crate::servers::{BYSTANDERS, admin_url, cluster, count_sessions, open, target_via};
use crate::sever::{Sever, Store, sever_bin};
use crate::{floor, trace};

/// The store's login password (the store cluster is throwaway, like the targets).
const STORE_PASSWORD: &str = "severstorepw";

/// Rotation-to-clean of N = 10 and 100 sessions (plus the bystanders that must survive) on
/// a target 2 ms away, by a sever whose PostgreSQL store is 2 ms away too, against the floor
/// through the target's proxy. The target's and the store's round trips are counted apart,
/// each by its own proxy.
pub async fn production_shape(runs: usize, lines: &mut Vec<Line>) {
    let pg = cluster().await;
    pg.exec("CREATE ROLE app LOGIN PASSWORD 'pw'; CREATE ROLE other LOGIN PASSWORD 'pw'")
        .await;
    let store = TestPostgres::start();
    store
        .exec(&format!(
            "CREATE ROLE sever_store LOGIN PASSWORD '{STORE_PASSWORD}'"
        ))
        .await;
    store
        .exec("CREATE DATABASE sever_store OWNER sever_store")
        .await;
    let delay = Duration::from_millis(1);
    let (target_port, target) = delaying_proxy(pg.port(), delay).await;
    let (store_port, store_traffic) = delaying_proxy(store.port(), delay).await;
    // sever refuses inline passwords: the store's URL goes in a file, as the targets' do.
    let store_url = store.base_dir().join("store.url");
    std::fs::write(
        &store_url,
        format!("postgres://sever_store:{STORE_PASSWORD}@127.0.0.1:{store_port}/sever_store"),
    )
    .unwrap();
    let sever = Sever::launch(
        &sever_bin(),
        Store::Postgres(&store_url),
        &target_via("main", &pg, target_port),
        "[credentials.orders]\nlogins = [{ target = \"main\", login = \"app\" }]\n",
    )
    .await;
    let _bystanders = open(&pg, "other", BYSTANDERS).await;
    // The floor's client, through the target's proxy; the checks go directly.
    let mut remote = PgConnection::connect(&admin_url(target_port))
        .await
        .unwrap();
    let mut check = PgConnection::connect(&admin_url(pg.port())).await.unwrap();
    crate::sever::warm_up(&sever, "orders", || open(&pg, "app", 10)).await;
    for n in [10usize, 100] {
        let (mut with_sever, mut floor_took) = (Vec::new(), Vec::new());
        let (mut target_rt, mut store_rt, mut floor_rt) = (Vec::new(), Vec::new(), Vec::new());
        let mut both_rt = Vec::new();
        for run in 1..=runs {
            let sessions = open(&pg, "app", n).await;
            let (before, before_store) = (target.snapshot(), store_traffic.snapshot());
            with_sever.push(sever.rotate("orders").await);
            target_rt.push(target.since(&before));
            store_rt.push(store_traffic.since(&before_store));
            both_rt.push(sequential([
                (&*target, &before),
                (&*store_traffic, &before_store),
            ]));
            trace::print(
                &format!("8. N={n}, run {run}: sever, target"),
                &target,
                &before,
            );
            trace::print(
                &format!("8. N={n}, run {run}: sever, store"),
                &store_traffic,
                &before_store,
            );
            assert_eq!(count_sessions(&mut check, "app").await, 0, "all {n} gone");
            assert_eq!(count_sessions(&mut check, "other").await, BYSTANDERS as i64);
            drop(sessions);

            let sessions = open(&pg, "app", n).await;
            let before = target.snapshot();
            floor_took.push(floor::terminate(&mut remote, "app").await);
            floor_rt.push(target.since(&before));
            trace::print(&format!("8. N={n}, run {run}: floor"), &target, &before);
            drop(sessions);
        }
        let s = Stats::of(&mut with_sever);
        let f = Stats::of(&mut floor_took);
        let (trt, frt) = (median_rt(&mut target_rt), median_rt(&mut floor_rt));
        let srt = median_total(&mut store_rt);
        // What the answer waits for: the target's and the store's round trips doing work,
        // one after another, those in flight at once counted once (the roles read beside
        // the acceptance's commit); the pings as connections go back to their pools run
        // beside them and are shown apart.
        both_rt.sort();
        let sever_total = both_rt[both_rt.len() / 2];
        lines.push(Line {
            scenario: format!("8. store and target 2 ms away, N={n} (+{BYSTANDERS} others)"),
            sever: format!("{}; target {}; store {}", s.show(), trt.show(), srt.show()),
            comparison: format!("floor: {}; {}", f.show(), frt.show()),
            ratio: format!(
                "{}, {sever_total} RT against {}: {:+} RT",
                ratio(s.median, f.median),
                frt.sequential,
                sever_total as i64 - frt.sequential as i64
            ),
        });
    }
}

/// The run with the median total round trips (the store's work spreads over its pool).
fn median_total(samples: &mut [RoundTrips]) -> RoundTrips {
    samples.sort_by_key(|r| r.total);
    samples[samples.len() / 2]
}
