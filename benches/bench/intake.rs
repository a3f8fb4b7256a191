//! Scenarios 3 and 4: intake throughput and the footprint of the process serving it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sever_testkit::pg::TestPostgres;

use crate::report::{Line, Stats, ms};
use crate::servers::{cluster, target};
use crate::sever::{SECRET, Sever, Store, sever_bin};

/// What one binary did under the intake loads (scenario 3) and how big it was (scenario 4).
struct Measured {
    /// Per load (accepted, rejected): rate, median and p99 latency, unexpected answers.
    loads: Vec<(f64, Duration, Duration, usize)>,
    idle: f64,
    now: f64,
    peak: f64,
    ready: Duration,
    size: u64,
}

/// The two loads: signed events accepted (`202`), and bad signatures rejected (`401`).
const LOADS: [(&str, &str, u16); 2] = [
    ("3. intake: signed events accepted", SECRET, 202),
    (
        "3. intake: bad signatures rejected",
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        401,
    ),
];

/// Scenario 3 and 4: sustained signed events (accepted and audited), signature rejections,
/// and the footprint of the process serving them; beside them, with `SEVER_BENCH_BASELINE_BIN`
/// (set by `scripts/bench.sh`), the same figures of a baseline binary in the same run.
pub async fn intake_and_footprint(secs: u64, lines: &mut Vec<Line>) {
    let pg = cluster().await;
    let baseline = std::env::var_os("SEVER_BENCH_BASELINE_BIN").map(PathBuf::from);
    let label = format!(
        "baseline {}",
        std::env::var("SEVER_BENCH_BASELINE").unwrap_or_default()
    );
    // The baseline first, so neither runs on a machine the other has just warmed up more.
    let before = match &baseline {
        Some(bin) => Some(measure(bin, &pg, secs).await),
        None => None,
    };
    let current = measure(&sever_bin(), &pg, secs).await;
    let load = |(rate, p50, p99, wrong): (f64, Duration, Duration, usize)| {
        let unexpected = if wrong > 0 {
            format!(" ({wrong} unexpected answers)")
        } else {
            String::new()
        };
        format!("{rate:.0}/s, p50 {}, p99 {}{unexpected}", ms(p50), ms(p99))
    };
    for (i, (name, _, _)) in LOADS.iter().enumerate() {
        lines.push(Line {
            scenario: (*name).into(),
            sever: load(current.loads[i]),
            comparison: before
                .as_ref()
                .map_or("-".into(), |b| format!("{label}: {}", load(b.loads[i]))),
            ratio: before.as_ref().map_or("-".into(), |b| {
                format!("{:.2}x the rate", current.loads[i].0 / b.loads[i].0)
            }),
        });
    }
    let footprint = |m: &Measured| {
        format!(
            "idle RSS {:.1} MiB; under load {:.1} MiB (peak {:.1}); ready in {}; binary {:.1} MiB",
            m.idle,
            m.now,
            m.peak,
            ms(m.ready),
            m.size as f64 / 1048576.0
        )
    };
    lines.push(Line {
        scenario: "4. footprint".into(),
        sever: footprint(&current),
        comparison: before
            .as_ref()
            .map_or("-".into(), |b| format!("{label}: {}", footprint(b))),
        ratio: before.as_ref().map_or("-".into(), |b| {
            format!("{:.2}x the peak RSS", current.peak / b.peak)
        }),
    });
}

/// Starts `bin` on `pg`, lets it settle, and runs both loads against it.
async fn measure(bin: &Path, pg: &TestPostgres, secs: u64) -> Measured {
    let sever = Sever::launch(
        bin,
        Store::Sqlite,
        &target("main", pg),
        // A credential whose policy terminates nothing: each event is verified,
        // de-duplicated, stored with its plan and audited, and touches no database.
        "[credentials.noop]\npolicy = \"none\"\nlogins = [{ target = \"main\", login = \"app\" }]\n",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, _) = sever.rss_mib();
    let ready = sever.ready_after;
    let sever = Arc::new(sever);
    let mut loads = Vec::new();
    for (_, secret, expect) in LOADS {
        let (rate, mut latencies, wrong) = load(&sever, secret, expect, secs).await;
        let l = Stats::of(&mut latencies);
        let p99 = latencies[((latencies.len() - 1) as f64 * 0.99) as usize];
        loads.push((rate, l.median, p99, wrong));
    }
    let (now, peak) = sever.rss_mib();
    Measured {
        loads,
        idle,
        now,
        peak,
        ready,
        size: std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0),
    }
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
