#!/usr/bin/env bash
# Makes sure PyPI's `standardwebhooks` package (the Standard Webhooks project's own Python
# implementation) is installed: tests/it/notify verifies sever's outbound webhook signatures
# with it, an implementation independent of sever's. Installs it only when missing.
set -euo pipefail

if ! python3 -c 'import standardwebhooks' 2>/dev/null; then
    echo "installing standardwebhooks (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        standardwebhooks
fi
python3 -c 'import standardwebhooks' || { echo "error: standardwebhooks still missing" >&2; exit 1; }
echo "standardwebhooks: $(python3 -c 'import importlib.metadata as m; print(m.version("standardwebhooks"))')"
