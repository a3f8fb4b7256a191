#!/usr/bin/env bash
# Makes sure `moto_server` (the local AWS stand-in the Secrets Manager tests run) is
# installed: from PyPI, as `moto[server]`, when neither PATH nor the Python scripts dir has
# a working one. Prints nothing unless it installs.
set -euo pipefail

scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')

have_moto() {
    # A pyenv shim can be on PATH for a version that lacks the package, so run it.
    if [ -x "$scripts_dir/moto_server" ] && "$scripts_dir/moto_server" --help >/dev/null 2>&1; then
        return 0
    fi
    command -v moto_server >/dev/null 2>&1 && moto_server --help >/dev/null 2>&1
}

if ! have_moto; then
    echo "installing moto_server (PyPI package moto[server])"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'moto[server]'
    if ! have_moto; then
        echo "error: moto_server still not found after installing moto[server]" >&2
        exit 1
    fi
fi
