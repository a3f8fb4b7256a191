//! Scenario 6: one target at a distance, with the round trips on each side.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::proxy::{delaying_proxy, median_rt};
use crate::report::{Line, Stats, ms, ratio};
use crate::servers::{BYSTANDERS, admin_url, cluster, count_sessions, open, target_via};
use crate::sever::Sever;

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
    for n in [10usize, 100, 500] {
        let (mut with_sever, mut floor) = (Vec::new(), Vec::new());
        let (mut sever_rt, mut floor_rt) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let sessions = open(&pg, "app", n).await;
            let before = traffic.snapshot();
            with_sever.push(sever.rotate("orders").await);
            sever_rt.push(traffic.since(&before));
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
            drop(sessions);
        }
        let s = Stats::of(&mut with_sever);
        let f = Stats::of(&mut floor);
        let (srt, frt) = (median_rt(&mut sever_rt), median_rt(&mut floor_rt));
        lines.push(Line {
            scenario: format!("6. one target 2 ms away, N={n} (+{BYSTANDERS} others)"),
            sever: format!("{}; {}", s.show(), srt.show()),
            comparison: format!("floor: {}; {}", f.show(), frt.show()),
            ratio: format!(
                "{}, {:+} RT",
                ratio(s.median, f.median),
                srt.max as i64 - frt.max as i64
            ),
        });
    }
    lines.push(Line {
        scenario: "6. the proxy's real delay per hop (asked: 1 ms)".into(),
        sever: ms(traffic.mean_hop()),
        comparison: format!("one round trip: {}", ms(2 * traffic.mean_hop())),
        ratio: "-".into(),
    });
}
