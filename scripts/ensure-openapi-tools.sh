#!/usr/bin/env bash
# Makes sure the PyPI tools that check the OpenAPI document are installed, each only when
# missing: `openapi-spec-validator` (tests/it/openapi validates `GET /openapi.json` with it),
# `openapi-python-client` (tests/it/openapi generates a client from the document and calls
# two routes with it) and `schemathesis` (scripts/schemathesis.sh).
set -euo pipefail

# module to import, PyPI package
tools=(
    "openapi_spec_validator openapi-spec-validator"
    "openapi_python_client openapi-python-client"
    "schemathesis schemathesis"
)
for entry in "${tools[@]}"; do
    read -r module package <<<"$entry"
    if ! python3 -c "import $module" 2>/dev/null; then
        echo "installing $package (PyPI)"
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
            "$package"
    fi
    python3 -c "import $module" || { echo "error: $package still missing" >&2; exit 1; }
    echo "$package: $(python3 -c "import importlib.metadata as m; print(m.version('$package'))")"
done
