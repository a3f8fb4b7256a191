//! Scenario 1: rotation-to-clean on one local target, against the floor and the per-pid
//! script.

use std::process::Command;
use std::time::{Duration, Instant};

use sever_testkit::pg::TestPostgres;
use sqlx::{Connection, PgConnection};

use crate::report::{Line, Stats, ratio};
use crate::servers::{ADMIN_PASSWORD, BYSTANDERS, cluster, count_sessions, open, target};
use crate::sever::Sever;

/// Scenario 1: N sessions of the rotated login plus 50 bystanders; sever vs the floor vs
/// the per-pid script.
pub async fn rotation_to_clean(runs: usize, lines: &mut Vec<Line>) {
    let pg = cluster().await;
    pg.exec("CREATE ROLE app LOGIN PASSWORD 'pw'; CREATE ROLE other LOGIN PASSWORD 'pw'")
        .await;
    let sever = Sever::start(
        &target("main", &pg),
        "[credentials.orders]\nlogins = [{ target = \"main\", login = \"app\" }]\n",
    )
    .await;
    let _bystanders = open(&pg, "other", BYSTANDERS).await;
    let mut admin = PgConnection::connect(&pg.url("sever_admin", ADMIN_PASSWORD, "postgres"))
        .await
        .unwrap();
    for n in [10usize, 100, 500] {
        let mut with_sever = Vec::new();
        let mut floor = Vec::new();
        let mut script = Vec::new();
        for run in 0..runs {
            // sever: from sending the signed event (?wait=true) to its answer.
            let sessions = open(&pg, "app", n).await;
            with_sever.push(sever.rotate("orders").await);
            assert_eq!(count_sessions(&mut admin, "app").await, 0, "all {n} gone");
            assert_eq!(count_sessions(&mut admin, "other").await, BYSTANDERS as i64);
            drop(sessions);

            // The floor: one set-based statement over an open connection, then the same
            // check sever makes, that they are gone.
            let sessions = open(&pg, "app", n).await;
            let t = Instant::now();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename = 'app' AND backend_type = 'client backend'",
            )
            .execute(&mut admin)
            .await
            .unwrap();
            while count_sessions(&mut admin, "app").await > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            floor.push(t.elapsed());
            drop(sessions);

            // The script people write today: list the pids, one psql per pid. Slow, so
            // fewer runs.
            if run < runs.min(3) {
                let sessions = open(&pg, "app", n).await;
                let t = Instant::now();
                per_pid_script(&pg);
                // The last signal is sent when the script ends; it is done when they are gone.
                while count_sessions(&mut admin, "app").await > 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                script.push(t.elapsed());
                drop(sessions);
            }
        }
        let s = Stats::of(&mut with_sever);
        let f = Stats::of(&mut floor);
        let p = Stats::of(&mut script);
        lines.push(Line {
            scenario: format!("1. rotation-to-clean, N={n} (+{BYSTANDERS} others)"),
            sever: s.show(),
            comparison: format!("floor: {}", f.show()),
            ratio: ratio(s.median, f.median),
        });
        lines.push(Line {
            scenario: format!("1. rotation-to-clean, N={n}"),
            sever: s.show(),
            comparison: format!("per-pid psql script: {}", p.show()),
            ratio: format!(
                "{:.0}x faster",
                p.median.as_secs_f64() / s.median.as_secs_f64()
            ),
        });
    }
}

pub fn psql(pg: &TestPostgres, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "sever_admin",
        ])
        .args(["-d", "postgres", "-At", "-c", sql])
        .env("PGPASSWORD", ADMIN_PASSWORD)
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn per_pid_script(pg: &TestPostgres) {
    let pids = psql(
        pg,
        "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'",
    );
    for pid in pids.lines().filter(|l| !l.is_empty()) {
        psql(pg, &format!("SELECT pg_terminate_backend({pid})"));
    }
}
