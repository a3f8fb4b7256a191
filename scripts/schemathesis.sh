#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a live sever built from this tree: a throwaway PostgreSQL
# target (temp dir, free port), a SQLite store, the operator token on the operator routes,
# the Alertmanager token on its route and Standard Webhooks signatures on the signed event
# routes (scripts/schemathesis/sever_hooks.py). Bounded: a few examples per operation and a
# time budget. Fails on a 5xx or a response that breaks its documented schema, status or
# content type; afterwards `sever audit verify` must pass. Cleans up everything it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/servers.sh

MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-8}
MAX_TIME=${SCHEMATHESIS_MAX_TIME:-100}

work=$(mktemp -d)
pg_started=""
sever_pid=""
cleanup() {
    if [ -n "$sever_pid" ]; then kill "$sever_pid" 2>/dev/null || true; wait "$sever_pid" 2>/dev/null || true; fi
    if [ -n "$pg_started" ]; then as_pg pg_ctl -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# initdb refuses root: run PostgreSQL as the `postgres` OS user (servers.sh creates it).
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# SEVER_BIN: a binary already built from this tree (scripts/test.sh passes the one its
# integration tests ran); otherwise the debug build.
if [ -n "${SEVER_BIN:-}" ]; then
    sever=$SEVER_BIN
else
    cargo build --quiet --locked --bin sever
    sever=$(realpath "${CARGO_TARGET_DIR:-target}/debug/sever")
fi

# --- throwaway PostgreSQL target ---------------------------------------------------------------
chmod 755 "$work"
mkdir "$work/pg"
[ "$(id -u)" -eq 0 ] && chown postgres "$work/pg"
as_pg initdb -D "$work/pg" -A trust -U postgres >/dev/null
pg_port=$(free_port)
as_pg pg_ctl -D "$work/pg" -w -l "$work/pg/log" \
    -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1" start >/dev/null
pg_started=1
psql -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c \
    "CREATE ROLE sever_admin LOGIN PASSWORD 'severadminpw' IN ROLE pg_signal_backend, pg_read_all_stats;
     CREATE ROLE app LOGIN PASSWORD 'pw'"

# --- config: throwaway credentials -------------------------------------------------------------
operator_token=$("$sever" operator-token | awk '/^token /{print $NF}')
metrics_token="mt-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
alertmanager_token="am-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
webhook_secret="whsec_$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(24)).decode())')"
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
printf '%s\n' "postgres://sever_admin:severadminpw@127.0.0.1:$pg_port/postgres" >"$work/main.url"
printf '%s\n' "$webhook_secret" >"$work/webhook.secret"
intake_port=$(free_port)
operator_port=$(free_port)
cat >"$work/sever.toml" <<TOML
protected_logins = ["postgres"]

[server]
listen = "127.0.0.1:$intake_port"
operator_listen = "127.0.0.1:$operator_port"

[store]
url = "sqlite://$work/sever.db?mode=rwc"

[webhooks]
secrets = [{ file = "$work/webhook.secret" }]

[termination]
timeout = "5s"
verify_timeout = "3s"

[[operators]]
name = "schemathesis"
token_sha256 = "$(sha "$operator_token")"

[alertmanager]
tokens_sha256 = ["$(sha "$alertmanager_token")"]

[metrics]
tokens_sha256 = ["$(sha "$metrics_token")"]

[targets.main]
engine = "postgres"
url = { file = "$work/main.url" }
connect_timeout = "2s"

[credentials.app_db]
logins = [{ target = "main", login = "app" }]
TOML

SEVER_LOG=warn "$sever" --config "$work/sever.toml" serve >"$work/sever.log" 2>&1 &
sever_pid=$!
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$operator_port/healthz" >/dev/null 2>&1 && break
    kill -0 "$sever_pid" 2>/dev/null || { cat "$work/sever.log" >&2; exit 1; }
    sleep 0.1
done

# --- schemathesis --------------------------------------------------------------------------------
# The intake routes live on the intake listener: two runs, each on its listener's routes.
export SEVER_OPERATOR_TOKEN=$operator_token SEVER_ALERTMANAGER_TOKEN=$alertmanager_token
export SEVER_WEBHOOK_SECRET=$webhook_secret SEVER_METRICS_TOKEN=$metrics_token
export SCHEMATHESIS_HOOKS=sever_hooks PYTHONPATH="$PWD/scripts/schemathesis${PYTHONPATH:+:$PYTHONPATH}"
# From the temp dir: schemathesis and hypothesis keep their example databases in the cwd.
cd "$work"
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
intake_re='^/v1/(events|alerts)'
status=0
st run "http://127.0.0.1:$operator_port/openapi.json" --checks "$checks" \
    --max-examples "$MAX_EXAMPLES" --max-time "$((MAX_TIME / 2))" --request-timeout 10 \
    --exclude-path-regex "$intake_re" --seed 1 --no-color || status=$?
st run "http://127.0.0.1:$operator_port/openapi.json" --url "http://127.0.0.1:$intake_port" \
    --checks "$checks" --max-examples "$MAX_EXAMPLES" --max-time "$((MAX_TIME / 2))" \
    --request-timeout 10 --include-path-regex "$intake_re" --seed 1 --no-color || status=$?

# --- the audit trail is intact -------------------------------------------------------------------
kill "$sever_pid"; wait "$sever_pid" 2>/dev/null || true; sever_pid=""
"$sever" --config "$work/sever.toml" audit verify || { echo "audit verify failed" >&2; exit 1; }
if [ "$status" -ne 0 ]; then
    echo "schemathesis found failures (sever log: below)" >&2
    tail -n 50 "$work/sever.log" >&2
fi
exit "$status"
