#!/usr/bin/env bash
# Runs the benchmarks (issues 7 and 17) and prints one table. Builds the release binary it
# drives; starts its own throwaway PostgreSQL clusters (temp dirs, free ports) and removes
# them. Figures, not pass/fail. The scenarios:
#  1: rotation-to-clean on one target, N = 10/100/500 (+50 others that must survive), against
#     the SQL floor and the per-pid psql script;
#  2: fan-out to 1, 4 and 16 targets, local (20 sessions each) and 1 ms away (one each);
#  3: intake throughput (signed events accepted, bad signatures rejected), 64 clients;
#  4: footprint (RSS idle and under the intake load, time to ready, binary size);
#     3 and 4 also run a baseline binary built from an earlier revision, side by side;
#  5: a healthy target's rotation with 300 steps queued for a stalled one, and with none;
#  6: one target 2 ms away through a delaying proxy, N = 10/100/500, with the round trips
#     (RT) it counts;
#  7: 16 targets 2 ms away, one session each, against one, with their RT;
#  8: the production shape: a PostgreSQL store 2 ms away and the target 2 ms away,
#     N = 10/100, with the target's and the store's RT apart.
# Options (environment):
#   SEVER_BENCH_RUNS=7          repetitions per figure
#   SEVER_BENCH_INTAKE_SECS=5   length of each intake load
#   SEVER_BENCH_ONLY=1,3        scenarios to run (default: all)
#   SEVER_BENCH_LOG=sqlx=debug  log filter of the sever under test (to stderr)
#   SEVER_BENCH_TRACE=1         the delaying proxies decode the PostgreSQL protocol and print
#                               each measured rotation's round trips, message by message
#   SEVER_BENCH_BASELINE=53e7ebf  git revision of scenarios 3-4's baseline (`none`: skip it);
#                               its release binary is built once into
#                               $CARGO_TARGET_DIR/bench-baseline/ and reused
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/servers.sh
command -v psql >/dev/null || { echo "error: psql (the per-pid script's client) not found" >&2; exit 1; }

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked --bin sever

# The baseline for scenarios 3 and 4: the release binary of SEVER_BENCH_BASELINE (default:
# the previous release, the last landing before the store's one-statement commit and
# adopted steps), built from a `git archive` of that revision in a temp dir, with its own
# target dir, and kept by full commit hash.
only="${SEVER_BENCH_ONLY:-}"
wants() { [ -z "$only" ] || [[ ",${only// /}," == *",$1,"* ]]; }
export SEVER_BENCH_BASELINE="${SEVER_BENCH_BASELINE:-53e7ebf}"
unset SEVER_BENCH_BASELINE_BIN
if [ "$SEVER_BENCH_BASELINE" != none ] && { wants 3 || wants 4; }; then
    rev=$(git rev-parse --verify "$SEVER_BENCH_BASELINE^{commit}")
    baseline_dir="$target_dir/bench-baseline"
    bin="$baseline_dir/sever-$rev"
    if [ ! -x "$bin" ]; then
        echo "building the baseline binary of $SEVER_BENCH_BASELINE ($rev)"
        src=$(mktemp -d)
        trap 'rm -rf "$src"' EXIT
        git archive "$rev" | tar -x -C "$src"
        (cd "$src" && CARGO_TARGET_DIR="$baseline_dir/target" cargo build --release --locked --bin sever)
        cp "$baseline_dir/target/release/sever" "$bin.tmp"
        mv "$bin.tmp" "$bin"
        rm -rf "$src"
    fi
    export SEVER_BENCH_BASELINE_BIN="$bin"
fi

SEVER_BIN="$target_dir/release/sever" cargo bench --locked --bench bench
