#!/usr/bin/env bash
# Makes sure the Prometheus tools the metrics checks use are installed:
# - `promtool` (Debian package `prometheus`): `promtool check rules`, `promtool test rules` on
#   integrations/prometheus, and `promtool check metrics` on a real /metrics body (tests/metrics.rs);
# - Alertmanager (Debian package `prometheus-alertmanager`, whose binary Debian names
#   `prometheus-alertmanager`, not `alertmanager`);
# - the Python `prometheus_client` package (PyPI), whose parser tests/metrics.rs reads /metrics with.
# Installs only what is missing, says what it installed, and prints where the binaries are.
# Runs as root in CI; elsewhere uses sudo when it is there.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib/sudo.sh"

have_alertmanager() {
    command -v alertmanager >/dev/null 2>&1 || command -v prometheus-alertmanager >/dev/null 2>&1
}

packages=()
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
have_alertmanager || packages+=(prometheus-alertmanager)
if [ ${#packages[@]} -gt 0 ]; then
    echo "installing Debian packages: ${packages[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    # Installing a package with a service starts it where systemd or invoke-rc.d can; this
    # machine only needs the binaries, so policy-rc.d refuses the starts (exit 101) meanwhile.
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
        "${sudo_cmd[@]}" chmod +x "$policy"
        made_policy=1
    fi
    status=0
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${packages[@]}" >/dev/null || status=$?
    if [ -n "$made_policy" ]; then "${sudo_cmd[@]}" rm -f "$policy"; fi
    if [ "$status" -ne 0 ]; then
        echo "error: apt-get install ${packages[*]} failed ($status)" >&2
        exit "$status"
    fi
fi

if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    echo "installing prometheus_client (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        prometheus_client
fi

command -v promtool >/dev/null 2>&1 || { echo "error: promtool still missing" >&2; exit 1; }
have_alertmanager || { echo "error: alertmanager still missing" >&2; exit 1; }
python3 -c 'import prometheus_client' || { echo "error: prometheus_client still missing" >&2; exit 1; }

alertmanager=$(command -v alertmanager || command -v prometheus-alertmanager)
echo "promtool: $(command -v promtool) ($(promtool --version 2>&1 | head -n1))"
echo "alertmanager: $alertmanager"
echo "prometheus_client: $(python3 -c 'import prometheus_client, importlib.metadata as m; print(m.version("prometheus_client"))')"
