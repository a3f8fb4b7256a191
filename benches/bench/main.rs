//! sever's benchmarks: rotation-to-clean latency against the SQL floor and the per-pid script
//! people write today, fan-out across targets, intake throughput, and footprint. Figures,
//! not pass/fail. Run with `scripts/bench.sh`, which builds the release binary this drives
//! (`SEVER_BIN`) and starts nothing else: the benchmark starts its own throwaway PostgreSQL
//! clusters (temp dirs, free ports, `max_connections` raised) and removes them afterwards.
//!
//! Environment: `SEVER_BENCH_RUNS` (repetitions per figure, default 7),
//! `SEVER_BENCH_INTAKE_SECS` (length of each intake load, default 5), `SEVER_BENCH_ONLY`
//! (scenario numbers to run, comma-separated, e.g. `2,6`; default all), `SEVER_BENCH_LOG`
//! (sever's log filter, default `error`; its log goes to stderr).

mod distance;
mod fan_out;
mod floor;
mod intake;
mod production;
mod proxy;
mod report;
mod rotation;
mod servers;
mod sever;
mod stalled;
mod trace;

use std::time::Duration;

use comfy_table::Table;

use fan_out::FanOut;
use servers::cluster;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --all-targets` builds and runs bench targets too, without `--bench`: the
    // benchmarks need the release binary and minutes, so they only run under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmarks run with scripts/bench.sh (cargo bench); nothing to test here");
        return;
    }
    let runs = env_usize("SEVER_BENCH_RUNS", 7);
    let secs = env_usize("SEVER_BENCH_INTAKE_SECS", 5) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::var("SEVER_BENCH_ONLY").unwrap_or_default();
    let wanted = |n: &str| only.is_empty() || only.split(',').any(|s| s.trim() == n);
    let lines = runtime.block_on(async {
        let mut lines = Vec::new();
        if wanted("1") {
            rotation::rotation_to_clean(runs, &mut lines).await;
        }
        if wanted("2") {
            let clusters = futures_util::future::join_all((0..4).map(|_| cluster())).await;
            for (j, pg) in (0..16).map(|j| (j, &clusters[j % 4])) {
                pg.exec(&format!("CREATE ROLE app{j} LOGIN PASSWORD 'pw'"))
                    .await;
            }
            // On this machine every cluster shares the same 2 cores, so ending 16 x 20
            // backends costs 16 times the CPU of 20 whoever signals them; with one session
            // per target 1 ms away, the time is mostly network, as with databases on
            // hosts of their own, and the growth shows what sever adds per target.
            for shape in [
                FanOut {
                    per_target: 20,
                    delay: None,
                },
                FanOut {
                    per_target: 1,
                    delay: Some(Duration::from_millis(1)),
                },
            ] {
                fan_out::fan_out(&clusters, shape, runs, &mut lines).await;
            }
        }
        if wanted("3") || wanted("4") {
            intake::intake_and_footprint(secs, &mut lines).await;
        }
        if wanted("5") {
            stalled::one_stalled_target(runs, &mut lines).await;
        }
        if wanted("6") {
            distance::at_a_distance(runs, &mut lines).await;
        }
        if wanted("7") {
            distance::sixteen_at_a_distance(runs, &mut lines).await;
        }
        if wanted("8") {
            production::production_shape(runs, &mut lines).await;
        }
        lines
    });
    let mut table = Table::new();
    table.set_header(["scenario", "sever (median, p95)", "comparison", "ratio"]);
    for l in lines {
        table.add_row([l.scenario, l.sever, l.comparison, l.ratio]);
    }
    println!("{table}");
    println!("runs per figure: {runs}; intake load: {secs} s per line, 64 clients");
}
