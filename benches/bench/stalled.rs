//! Scenario 5: a healthy target's rotation with steps queued for a stalled one.

use serde_json::json;
use sever_testkit::proxy;
use sqlx::{Connection, PgConnection};

use crate::report::{Line, Stats, ratio};
use crate::servers::{ADMIN_PASSWORD, cluster, count_sessions, open, target, target_via};
use crate::sever::{SECRET, Sever};

/// Scenario 5: rotation-to-clean of 100 sessions on a healthy target, with 300 steps queued
/// for a second target that stopped answering (a real proxy in front of it that accepts and
/// then forwards nothing, closing nothing), next to the same rotation with none queued.
pub async fn one_stalled_target(runs: usize, lines: &mut Vec<Line>) {
    let pg = cluster().await;
    pg.exec("CREATE ROLE app LOGIN PASSWORD 'pw'; CREATE ROLE gone LOGIN PASSWORD 'pw'")
        .await;
    let stalling = proxy::StallingProxy::start(pg.port()).await;
    let sever = Sever::start(
        &format!(
            "{}{}",
            target("main", &pg),
            target_via("stalled", &pg, stalling.port)
        ),
        "[credentials.orders]\nlogins = [{ target = \"main\", login = \"app\" }]\n\
         [credentials.lost]\nlogins = [{ target = \"stalled\", login = \"gone\" }]\n",
    )
    .await;
    let mut admin = PgConnection::connect(&pg.url("sever_admin", ADMIN_PASSWORD, "postgres"))
        .await
        .unwrap();
    let mut rotate = async |runs: usize| {
        let mut samples = Vec::new();
        for _ in 0..runs {
            let sessions = open(&pg, "app", 100).await;
            samples.push(sever.rotate("orders").await);
            assert_eq!(count_sessions(&mut admin, "app").await, 0, "all 100 gone");
            drop(sessions);
        }
        Stats::of(&mut samples)
    };
    let clear = rotate(runs).await;
    stalling.stall();
    for _ in 0..300 {
        let (status, body) = sever
            .event(
                &json!({"credential": "lost", "kind": "revoked"}),
                false,
                SECRET,
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let stalled = rotate(runs).await;
    lines.push(Line {
        scenario: "5. one stalled target: rotation-to-clean, N=100, 300 steps queued for it".into(),
        sever: stalled.show(),
        comparison: format!("none queued: {}", clear.show()),
        ratio: ratio(stalled.median, clear.median),
    });
}
