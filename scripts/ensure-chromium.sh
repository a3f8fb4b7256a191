#!/usr/bin/env bash
# Makes sure the console's browser test can run: Debian's `chromium` and `chromium-driver`
# (headless Chromium and the matching ChromeDriver; Playwright's and Selenium Manager's own
# browser downloads are not reachable here) and PyPI's `selenium`, which the test drives
# ChromeDriver with (given the driver's path, so it never tries to download one).
# Installs only what is missing, and prints the versions. Runs as root in CI; elsewhere uses
# sudo when it is there.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib/sudo.sh"

packages=()
[ -x /usr/bin/chromium ] || packages+=(chromium)
[ -x /usr/bin/chromedriver ] || packages+=(chromium-driver)
if [ ${#packages[@]} -gt 0 ]; then
    echo "installing Debian packages: ${packages[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! python3 -c 'import selenium' 2>/dev/null; then
    echo "installing selenium (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore selenium
fi

[ -x /usr/bin/chromium ] || { echo "error: chromium still missing" >&2; exit 1; }
[ -x /usr/bin/chromedriver ] || { echo "error: chromedriver still missing" >&2; exit 1; }
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
echo "chromedriver: $(/usr/bin/chromedriver --version | head -n1)"
echo "selenium: $(python3 -c 'import selenium; print(selenium.__version__)')"
