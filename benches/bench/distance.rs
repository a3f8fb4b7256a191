//! Scenarios 6 and 7: one target at a distance, and 16 against one, with the round trips
//! on each side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::proxy::{RoundTrips, Snapshot, Traffic, delaying_proxy, median_rt};
use crate::report::{Line, Stats, ms, ratio};
use crate::servers::{
    BYSTANDERS, admin_url, cluster, count_sessions, open, open_per_target, target_via,
};
use crate::sever::Sever;
use crate::{floor, trace};

/// Scenario 6: rotation-to-clean on one target 2 ms away (1 ms each way through a delaying
/// proxy), N = 10, 100 and 500 sessions plus the bystanders that must survive, against the
/// floor through the same proxy: the set-based statement over an open connection, then polls
/// until the sessions are gone. Beside each figure, the round trips the proxy counted.
pub async fn at_a_distance(runs: usize, lines: &mut Vec<Line>) {
    let pg = cluster().await;
    pg.exec("CREATE ROLE app LOGIN PASSWORD 'pw'; CREATE ROLE other LOGIN PASSWORD 'pw'")
        .await;
    let (port, traffic) = delaying_proxy(pg.port(), Duration::from_millis(1)).await;
    let sever = Sever::start(
        &target_via("main", &pg, port),
        "[credentials.orders]\nlogins = [{ target = \"main\", login = \"app\" }]\n",
    )
    .await;
    let _bystanders = open(&pg, "other", BYSTANDERS).await;
    // The floor's client, through the proxy; the checks go directly and cost nothing.
    let mut remote = PgConnection::connect(&admin_url(port)).await.unwrap();
    let mut check = PgConnection::connect(&admin_url(pg.port())).await.unwrap();
    crate::sever::warm_up(&sever, "orders", || open(&pg, "app", 10)).await;
    for n in [10usize, 100, 500] {
        let (mut with_sever, mut floor) = (Vec::new(), Vec::new());
        let (mut sever_rt, mut floor_rt) = (Vec::new(), Vec::new());
        for run in 1..=runs {
            let sessions = open(&pg, "app", n).await;
            let before = traffic.snapshot();
            with_sever.push(sever.rotate("orders").await);
            sever_rt.push(traffic.since(&before));
            trace::print(&format!("6. N={n}, run {run}: sever"), &traffic, &before);
            assert_eq!(count_sessions(&mut check, "app").await, 0, "all {n} gone");
            assert_eq!(count_sessions(&mut check, "other").await, BYSTANDERS as i64);
            drop(sessions);

            let sessions = open(&pg, "app", n).await;
            let before = traffic.snapshot();
            let t = Instant::now();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename = 'app' AND backend_type = 'client backend'",
            )
            .execute(&mut remote)
            .await
            .unwrap();
            while count_sessions(&mut remote, "app").await > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            floor.push(t.elapsed());
            floor_rt.push(traffic.since(&before));
            trace::print(&format!("6. N={n}, run {run}: floor"), &traffic, &before);
            drop(sessions);
        }
        lines.push(
            against_floor(
                format!("6. one target 2 ms away, N={n} (+{BYSTANDERS} others)"),
                (&mut with_sever, &mut sever_rt),
                (&mut floor, &mut floor_rt),
            )
            .0,
        );
    }
    lines.push(Line {
        scenario: "6. the proxy's real delay per hop (asked: 1 ms)".into(),
        sever: ms(traffic.mean_hop()),
        comparison: format!("one round trip: {}", ms(2 * traffic.mean_hop())),
        ratio: "-".into(),
    });
}

/// Scenario 7: one session on each of 16 targets 2 ms away (1 ms each way, a delaying proxy
/// of its own per target, the targets spread over 4 clusters), against one such target, and
/// the floor through the same proxies: the set-based statement on every target at once, each
/// over its open connection. The figure the issue asks for is the growth, 16 targets
/// against 1, of sever's time against the floor's own growth.
pub async fn sixteen_at_a_distance(runs: usize, lines: &mut Vec<Line>) {
    let clusters = futures_util::future::join_all((0..4).map(|_| cluster())).await;
    for j in 0..16 {
        clusters[j % 4]
            .exec(&format!("CREATE ROLE app{j} LOGIN PASSWORD 'pw'"))
            .await;
    }
    let (mut targets, mut traffics, mut floors) = (String::new(), Vec::new(), Vec::new());
    for j in 0..16 {
        let pg = &clusters[j % 4];
        let (port, traffic) = delaying_proxy(pg.port(), Duration::from_millis(1)).await;
        targets.push_str(&target_via(&format!("t{j}"), pg, port));
        traffics.push(traffic);
        // The floor's open connection to this target, through its proxy.
        floors.push(PgConnection::connect(&admin_url(port)).await.unwrap());
    }
    let logins = |k: usize| {
        (0..k)
            .map(|j| format!("{{ target = \"t{j}\", login = \"app{j}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let credentials = format!(
        "[credentials.one]\nlogins = [{}]\n[credentials.sixteen]\nlogins = [{}]\n",
        logins(1),
        logins(16)
    );
    let sever = Sever::start(&targets, &credentials).await;
    // Checks go directly to the clusters, so they cost the figures nothing.
    let mut checks = Vec::new();
    for pg in &clusters {
        checks.push(PgConnection::connect(&admin_url(pg.port())).await.unwrap());
    }
    let snapshots = |traffics: &[Arc<Traffic>]| traffics.iter().map(|t| t.snapshot()).collect();
    let mut one = (Duration::ZERO, Duration::ZERO);
    for (k, credential) in [(1usize, "one"), (16, "sixteen")] {
        crate::sever::warm_up(&sever, credential, || open_per_target(&clusters, k, 1)).await;
        let (mut with_sever, mut floor) = (Vec::new(), Vec::new());
        let (mut sever_rt, mut floor_rt) = (Vec::new(), Vec::new());
        for run in 1..=runs {
            let sessions = open_per_target(&clusters, k, 1).await;
            let before: Vec<Snapshot> = snapshots(&traffics);
            with_sever.push(sever.rotate(credential).await);
            sever_rt.push(RoundTrips::since_all(&traffics, &before));
            for j in 0..k {
                let label = format!("7. {k} target(s), run {run}: sever, target t{j}");
                trace::print(&label, &traffics[j], &before[j]);
                let login = format!("app{j}");
                assert_eq!(count_sessions(&mut checks[j % 4], &login).await, 0);
            }
            drop(sessions);

            let sessions = open_per_target(&clusters, k, 1).await;
            let before: Vec<Snapshot> = snapshots(&traffics);
            let t = Instant::now();
            futures_util::future::join_all(
                floors
                    .iter_mut()
                    .take(k)
                    .enumerate()
                    .map(
                        |(j, conn)| async move { floor::terminate(conn, &format!("app{j}")).await },
                    ),
            )
            .await;
            floor.push(t.elapsed());
            floor_rt.push(RoundTrips::since_all(&traffics, &before));
            for j in 0..k {
                let label = format!("7. {k} target(s), run {run}: floor, target t{j}");
                trace::print(&label, &traffics[j], &before[j]);
            }
            drop(sessions);
        }
        let (line, medians) = against_floor(
            format!("7. {k} target(s) 2 ms away x 1 session"),
            (&mut with_sever, &mut sever_rt),
            (&mut floor, &mut floor_rt),
        );
        lines.push(line);
        let (s, f) = medians;
        if k == 1 {
            one = (s, f);
        } else {
            let growth = s.as_secs_f64() / one.0.as_secs_f64();
            let floor_growth = f.as_secs_f64() / one.1.as_secs_f64();
            lines.push(Line {
                scenario: "7. 16 targets against 1, 2 ms away".into(),
                sever: format!("{growth:.2}x the time of 1 target"),
                comparison: format!("floor: {floor_growth:.2}x"),
                ratio: format!("{:.2}x the floor's growth", growth / floor_growth),
            });
        }
    }
}

/// A row comparing sever with the floor through the same proxy: medians and p95s, the
/// median round trips of each, and sever's extra round trips on its busiest connection;
/// also the two medians (sever's, the floor's).
fn against_floor(
    scenario: String,
    sever: (&mut [Duration], &mut [RoundTrips]),
    floor: (&mut [Duration], &mut [RoundTrips]),
) -> (Line, (Duration, Duration)) {
    let (s, f) = (Stats::of(sever.0), Stats::of(floor.0));
    let (srt, frt) = (median_rt(sever.1), median_rt(floor.1));
    let line = Line {
        scenario,
        sever: format!("{}; {}", s.show(), srt.show()),
        comparison: format!("floor: {}; {}", f.show(), frt.show()),
        ratio: format!(
            "{}, {:+} RT",
            ratio(s.median, f.median),
            srt.sequential as i64 - frt.sequential as i64
        ),
    };
    (line, (s.median, f.median))
}
