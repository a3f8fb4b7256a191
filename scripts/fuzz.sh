#!/usr/bin/env bash
# Runs each fuzz target (fuzz/, cargo-fuzz, libFuzzer) for FUZZ_SECONDS seconds (default 20)
# on the installed nightly toolchain. Each run starts from the committed seeds
# (fuzz/seeds/<target>) and the corpus earlier runs grew (fuzz/corpus/<target>, not
# committed); new inputs go to the latter. A crash fails the script and leaves the input in
# fuzz/artifacts/<target>/. Installs cargo-fuzz from crates.io when it is missing.
#
#     scripts/fuzz.sh                  every target
#     FUZZ_SECONDS=300 scripts/fuzz.sh sns webhook
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds=${FUZZ_SECONDS:-20}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "error: the fuzz targets need the nightly toolchain, which is not installed" >&2
    exit 1
fi
if ! cargo fuzz --help >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# One build for every target; the runs below then only link.
cargo +nightly fuzz build
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "=== fuzzing $target for ${seconds}s"
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1
done
echo "fuzzed ${#targets[@]} target(s) for ${seconds}s each: no crash"
