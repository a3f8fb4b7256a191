#!/usr/bin/env bash
# Validates the Kubernetes manifests (integrations/kubernetes/) offline: builds them with
# kustomize (through kubectl) when kubectl is present, otherwise takes each manifest file as
# it is; validates every resource strictly (unknown fields fail) with kubernetes-validate,
# whose schemas ship inside the package, against the oldest and newest Kubernetes versions
# we support; then checks that the manifests agree with sever.toml (ports, every
# `{ env = "…" }` supplied). Installs kubernetes-validate from PyPI when it is not on PATH.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=integrations/kubernetes
VERSIONS=(1.30.0 1.37.0)

VALIDATE=kubernetes-validate
if ! command -v kubernetes-validate >/dev/null 2>&1; then
    pip install --quiet kubernetes-validate
    hash -r
    if ! command -v kubernetes-validate >/dev/null 2>&1; then
        # pip's scripts dir may not be on PATH (or a pyenv shim not yet rehashed).
        VALIDATE="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/kubernetes-validate"
    fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize "$DIR" >"$tmp/built.yaml"
    manifests=("$tmp/built.yaml")
    echo "kustomize: $DIR builds"
else
    echo "kubectl not found: validating each manifest without kustomize"
    manifests=()
    for f in "$DIR"/*.yaml; do
        [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
    done
fi

for version in "${VERSIONS[@]}"; do
    "$VALIDATE" --strict --quiet --kubernetes-version "$version" "${manifests[@]}"
    echo "kubernetes-validate: $DIR valid for Kubernetes $version"
done

# The manifests and the config they mount must agree. PyYAML comes with kubernetes-validate.
python3 - "$DIR" <<'EOF'
import pathlib, sys, tomllib
import yaml

root = pathlib.Path(sys.argv[1])
errors = []
kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
for name in kustomization["resources"] + [
    f for g in kustomization.get("configMapGenerator", []) for f in g["files"]
]:
    if not (root / name).is_file():
        errors.append(f"kustomization.yaml lists {name}, which does not exist")

config = tomllib.loads((root / "sever.toml").read_text())
deployment = yaml.safe_load((root / "deployment.yaml").read_text())
container = deployment["spec"]["template"]["spec"]["containers"][0]
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
env = {e["name"] for e in container["env"]}
server = config["server"]
for key, port_name in [("listen", "intake"), ("operator_listen", "operator")]:
    port = int(server[key].rsplit(":", 1)[1])
    if ports.get(port_name) != port:
        errors.append(f"server.{key} is port {port} but containerPort {port_name} is {ports.get(port_name)}")

def env_refs(value):
    """Every variable named by a `{ env = "NAME" }` anywhere in the config."""
    if isinstance(value, dict):
        if set(value) == {"env"}:
            yield value["env"]
        else:
            for v in value.values():
                yield from env_refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from env_refs(v)

for name in env_refs(config):
    if name not in env:
        errors.append(f"sever.toml reads ${name}, which deployment.yaml does not set")
for name in ["SEVER_CONFIG", "SEVER_REPLICA_ID"]:
    if name not in env:
        errors.append(f"deployment.yaml does not set {name}")

services = [d for d in yaml.safe_load_all((root / "services.yaml").read_text())]
for service in services:
    for port in service["spec"]["ports"]:
        if port["targetPort"] not in ports:
            errors.append(f"service {service['metadata']['name']} targets unknown port {port['targetPort']}")

for error in errors:
    print(f"error: {error}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"consistency: {root} matches its sever.toml")
EOF
