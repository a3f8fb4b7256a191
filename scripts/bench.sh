#!/usr/bin/env bash
# Runs the benchmarks (issue 7) and prints one table: rotation-to-clean latency against the
# SQL floor and the per-pid psql script, fan-out across targets, intake throughput, and
# footprint. Builds the release binary it drives; starts its own throwaway PostgreSQL
# clusters (temp dirs, free ports) and removes them. Figures, not pass/fail.
#   SEVER_BENCH_RUNS=7 SEVER_BENCH_INTAKE_SECS=5 SEVER_BENCH_ONLY=1,2,3,4,5,6 scripts/bench.sh
# (5: a healthy target's rotation with 300 steps queued for a stalled one, and with none;
#  6: one target 2 ms away through a delaying proxy, with the round trips it counts)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/servers.sh
command -v psql >/dev/null || { echo "error: psql (the per-pid script's client) not found" >&2; exit 1; }

cargo build --release --locked --bin sever
SEVER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/sever" cargo bench --locked --bench bench
