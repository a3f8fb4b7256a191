//! Scenario 2: one rotation fanned out to 1, 4 and 16 targets, local and at a distance.

use std::time::{Duration, Instant};

use sever_testkit::pg::TestPostgres;
use sqlx::{Connection, PgConnection};

use crate::proxy::delaying_proxy;
use crate::report::{Line, Stats, ratio};
use crate::servers::{admin_url, count_sessions, open_per_target, target_via};
use crate::sever::Sever;

/// Where scenario 2's targets are and how many sessions each has.
#[derive(Clone, Copy)]
pub struct FanOut {
    /// Sessions of the rotated login on each target.
    pub per_target: usize,
    /// Added to every packet in each direction between sever (or the floor's client) and
    /// the targets, by a proxy in front of each cluster; `None`: connected directly.
    pub delay: Option<Duration>,
}

impl FanOut {
    pub fn label(&self) -> String {
        match self.delay {
            None => format!("{} sessions", self.per_target),
            Some(d) => format!("{} session(s), {} ms away", self.per_target, d.as_millis()),
        }
    }
}

/// Scenario 2: one rotation mapped to 1, 4 and 16 targets (4 clusters, a login per target),
/// against the floor: the set-based statement on every target at once, each over an open
/// connection, until every target is clean.
pub async fn fan_out(clusters: &[TestPostgres], shape: FanOut, runs: usize, lines: &mut Vec<Line>) {
    // Each target's connections go through a proxy of its own when it is "away".
    let mut ports = Vec::new();
    for j in 0..16 {
        let pg = &clusters[j % 4];
        ports.push(match shape.delay {
            None => pg.port(),
            Some(delay) => delaying_proxy(pg.port(), delay).await.0,
        });
    }
    let mut targets = String::new();
    let mut credentials = String::new();
    for (j, port) in ports.iter().enumerate() {
        targets.push_str(&target_via(&format!("t{j}"), &clusters[j % 4], *port));
    }
    for k in [1usize, 4, 16] {
        let logins: Vec<String> = (0..k)
            .map(|j| format!("{{ target = \"t{j}\", login = \"app{j}\" }}"))
            .collect();
        credentials.push_str(&format!(
            "[credentials.fan{k}]\nlogins = [{}]\n",
            logins.join(", ")
        ));
    }
    let sever = Sever::start(&targets, &credentials).await;
    // The floor's open connections: one per target, as sever keeps a warm one per target.
    let mut admins = Vec::new();
    for port in &ports {
        admins.push(PgConnection::connect(&admin_url(*port)).await.unwrap());
    }
    // Checks go directly to the clusters, so they cost the figures nothing.
    let mut checks = Vec::new();
    for pg in clusters {
        checks.push(PgConnection::connect(&admin_url(pg.port())).await.unwrap());
    }
    let mut one = (Duration::ZERO, Duration::ZERO);
    for k in [1usize, 4, 16] {
        let mut samples = Vec::new();
        let mut floor = Vec::new();
        for _ in 0..runs {
            let sessions = open_per_target(clusters, k, shape.per_target).await;
            samples.push(sever.rotate(&format!("fan{k}")).await);
            for j in 0..k {
                assert_eq!(
                    count_sessions(&mut checks[j % 4], &format!("app{j}")).await,
                    0
                );
            }
            drop(sessions);

            let sessions = open_per_target(clusters, k, shape.per_target).await;
            let t = Instant::now();
            futures_util::future::join_all(admins.iter_mut().take(k).enumerate().map(
                |(j, admin)| async move {
                    let login = format!("app{j}");
                    sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE usename = $1 AND backend_type = 'client backend'",
                    )
                    .bind(&login)
                    .execute(&mut *admin)
                    .await
                    .unwrap();
                    while count_sessions(admin, &login).await > 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                },
            ))
            .await;
            floor.push(t.elapsed());
            drop(sessions);
        }
        let s = Stats::of(&mut samples);
        let f = Stats::of(&mut floor);
        if k == 1 {
            one = (s.median, f.median);
        }
        lines.push(Line {
            scenario: format!("2. fan-out, {k} target(s) x {}", shape.label()),
            sever: s.show(),
            comparison: format!("floor: {}", f.show()),
            ratio: ratio(s.median, f.median),
        });
        if k > 1 {
            lines.push(Line {
                scenario: format!("2. fan-out, {k} targets against 1 ({})", shape.label()),
                sever: format!("{} of 1 target", ratio(s.median, one.0)),
                comparison: format!("floor: {} of 1 target", ratio(f.median, one.1)),
                ratio: "-".into(),
            });
        }
    }
}
