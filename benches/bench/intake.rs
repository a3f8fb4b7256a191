//! Scenarios 3 and 4: intake throughput and the footprint of the process serving it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::report::{Line, Stats, ms};
use crate::servers::{cluster, target};
use crate::sever::{SECRET, Sever, sever_bin};

/// Scenario 3 and 4: sustained signed events (accepted and audited), signature rejections,
/// and the footprint of the process serving them.
pub async fn intake_and_footprint(secs: u64, lines: &mut Vec<Line>) {
    let pg = cluster().await;
    let sever = Sever::start(
        &target("main", &pg),
        // A credential whose policy terminates nothing: each event is verified,
        // de-duplicated, stored with its plan and audited, and touches no database.
        "[credentials.noop]\npolicy = \"none\"\nlogins = [{ target = \"main\", login = \"app\" }]\n",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, _) = sever.rss_mib();
    let ready = sever.ready_after;
    let sever = Arc::new(sever);
    for (label, secret, expect) in [
        ("3. intake: signed events accepted", SECRET, 202u16),
        (
            "3. intake: bad signatures rejected",
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            401,
        ),
    ] {
        let (rate, mut latencies, wrong) = load(&sever, secret, expect, secs).await;
        let l = Stats::of(&mut latencies);
        let p99 = latencies[((latencies.len() - 1) as f64 * 0.99) as usize];
        lines.push(Line {
            scenario: label.into(),
            sever: format!("{rate:.0}/s, p50 {}, p99 {}", ms(l.median), ms(p99)),
            comparison: if wrong > 0 {
                format!("{wrong} unexpected answers")
            } else {
                "-".into()
            },
            ratio: "-".into(),
        });
    }
    let (now, peak) = sever.rss_mib();
    let size = std::fs::metadata(sever_bin()).map(|m| m.len()).unwrap_or(0);
    lines.push(Line {
        scenario: "4. footprint".into(),
        sever: format!(
            "idle RSS {idle:.1} MiB; under load {now:.1} MiB (peak {peak:.1}); ready in {}; binary {:.1} MiB",
            ms(ready),
            size as f64 / 1048576.0
        ),
        comparison: "-".into(),
        ratio: "-".into(),
    });
}

/// Sends events from 64 concurrent clients for `secs`; rate, latencies, wrong answers.
pub async fn load(
    sever: &Arc<Sever>,
    secret: &'static str,
    expect: u16,
    secs: u64,
) -> (f64, Vec<Duration>, usize) {
    let stop = Instant::now() + Duration::from_secs(secs);
    let wrong = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..64).map(|_| {
        let sever = sever.clone();
        let wrong = wrong.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let (status, _) = sever
                    .event(
                        &json!({"credential": "noop", "kind": "rotated"}),
                        false,
                        secret,
                    )
                    .await;
                latencies.push(t.elapsed());
                if status != expect {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        })
    });
    let mut latencies = Vec::new();
    for w in futures_util::future::join_all(workers).await {
        latencies.extend(w.unwrap());
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    (rate, latencies, wrong.load(Ordering::Relaxed))
}
