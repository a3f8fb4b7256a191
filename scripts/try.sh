#!/usr/bin/env bash
# Something to look at in one command: a throwaway PostgreSQL (temp dir, free port) with a few
# demo logins holding sessions in different states, and sever serving it, console included.
#
#   scripts/try.sh           start everything, print the console URL and the operator token,
#                            and wait; Ctrl-C stops sever, the sessions and PostgreSQL and
#                            removes the temp dir
#   scripts/try.sh --check   start everything, check GET /v1/sessions lists the demo
#                            sessions, clean up and exit (scripts/test.sh runs this)
#
# The sessions: app_orders idle (three) and running a long pg_sleep; app_reports idle in a
# transaction, and blocked by batch_etl, which holds a lock on the orders table inside an open
# transaction; dba, a superuser (sever never ends its sessions); and an app_orders session whose
# application_name is an HTML tag, to show the console escapes what targets report.
#
# Uses SEVER_BIN when set, else builds the debug binary with cargo. Works as root (PostgreSQL
# then runs as the `postgres` OS user, which scripts/lib/servers.sh creates) and as non-root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

check=""
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    *) echo "usage: scripts/try.sh [--check]" >&2; exit 2 ;;
esac

SEVER_SERVERS=postgres source scripts/lib/servers.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/sever-try.XXXXXX")
pg_started=""
sever_pid=""
holders=()
holder_fds=()
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$sever_pid" ]; then kill "$sever_pid" 2>/dev/null || true; wait "$sever_pid" 2>/dev/null || true; fi
    # Closing a holder's stdin ends its psql once its statement is over; stopping PostgreSQL
    # ends the rest (the pg_sleep, the blocked one). Each is then reaped by its pid.
    for fd in "${holder_fds[@]}"; do exec {fd}>&- 2>/dev/null || true; done
    if [ -n "$pg_started" ]; then
        as_pg pg_ctl -D "$work/pg" -m fast -w stop >/dev/null 2>&1 \
            || as_pg pg_ctl -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    fi
    for pid in "${holders[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# initdb refuses root: run PostgreSQL as the `postgres` OS user.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
random() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
fail() {
    echo "try.sh: $*" >&2
    for log in "$work/sever.log" "$work/pg/log" "$work/holders.log"; do
        [ -s "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
    done
    exit 1
}

if [ -n "${SEVER_BIN:-}" ]; then
    sever=$SEVER_BIN
else
    echo "building sever (cargo build; set SEVER_BIN to use another binary)"
    cargo build --quiet --locked --bin sever
    sever=$(realpath "${CARGO_TARGET_DIR:-target}/debug/sever")
fi

# --- a throwaway PostgreSQL ------------------------------------------------------------------
echo "starting a throwaway PostgreSQL in $work"
chmod 755 "$work"
mkdir "$work/pg"
[ "$(id -u)" -eq 0 ] && chown postgres "$work/pg"
pg_password=$(random)
printf '%s\n' "$pg_password" >"$work/pg.pw"
chmod 644 "$work/pg.pw"
as_pg initdb -D "$work/pg" -A scram-sha-256 -U postgres --pwfile="$work/pg.pw" >/dev/null
rm -f "$work/pg.pw"
pg_port=$(free_port)
as_pg pg_ctl -D "$work/pg" -w -l "$work/pg/log" \
    -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1" start >/dev/null \
    || fail "PostgreSQL did not start"
pg_started=1

# Every demo login has the same throwaway password; sever's own login has its own.
demo_password=$(random)
admin_password=$(random)
export PGHOST=127.0.0.1 PGPORT=$pg_port
sql() { PGPASSWORD=$pg_password psql -X -q -v ON_ERROR_STOP=1 -U postgres "$@"; }
sql -d postgres <<SQL >/dev/null
CREATE ROLE sever_admin LOGIN PASSWORD '$admin_password' IN ROLE pg_signal_backend, pg_read_all_stats;
CREATE ROLE app_orders LOGIN PASSWORD '$demo_password';
CREATE ROLE app_reports LOGIN PASSWORD '$demo_password';
CREATE ROLE batch_etl LOGIN PASSWORD '$demo_password';
CREATE ROLE dba LOGIN SUPERUSER PASSWORD '$demo_password';
CREATE DATABASE shop;
SQL
sql -d shop <<SQL >/dev/null
CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, placed_at timestamptz DEFAULT now());
INSERT INTO orders (item) SELECT 'item ' || n FROM generate_series(1, 100) n;
GRANT SELECT, INSERT, UPDATE ON orders TO app_orders, app_reports, batch_etl;
GRANT USAGE ON SEQUENCE orders_id_seq TO app_orders;
SQL

# --- the demo sessions -------------------------------------------------------------------------
# Each is a psql reading its statements from a FIFO that this script holds open: it stays
# connected until the script closes its end (or PostgreSQL stops), and dies with the script.
hold() {  # hold LOGIN APPLICATION_NAME SQL
    local fifo="$work/holder.${#holders[@]}" fd
    mkfifo "$fifo"
    PGPASSWORD=$demo_password PGAPPNAME=$2 psql -X -q -U "$1" -d shop <"$fifo" >>"$work/holders.log" 2>&1 &
    holders+=($!)
    exec {fd}>"$fifo"
    holder_fds+=("$fd")
    rm -f "$fifo"
    printf '%s\n' "$3" >&"$fd"
}
echo "opening demo sessions"
for _ in 1 2 3; do hold app_orders orders-api "SELECT count(*) FROM orders;"; done
hold app_orders orders-api "SELECT pg_sleep(86400);"
hold app_orders '<img src=x onerror=alert(1)>' "SELECT 1;"
hold app_reports reports "BEGIN; SELECT count(*) FROM orders;"
hold batch_etl nightly-etl "BEGIN; LOCK TABLE orders IN SHARE ROW EXCLUSIVE MODE;"
# Wait for the lock, so the next session is the one blocked.
for _ in $(seq 50); do
    locked=$(sql -d shop -At -c "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
        WHERE a.usename = 'batch_etl' AND l.mode = 'ShareRowExclusiveLock' AND l.granted")
    [ "$locked" = 1 ] && break
    sleep 0.1
done
[ "$locked" = 1 ] || fail "batch_etl did not take its lock"
hold app_reports reports "UPDATE orders SET item = item || ' (rechecked)' WHERE id = 1;"
hold dba psql "SELECT current_user;"

# --- sever -------------------------------------------------------------------------------------
token=$("$sever" operator-token | awk '/^token /{print $NF}')
[ -n "$token" ] || fail "sever operator-token printed no token"
printf '%s\n' "postgres://sever_admin:$admin_password@127.0.0.1:$pg_port/postgres" >"$work/demo.url"
printf 'whsec_%s\n' "$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(24)).decode())')" >"$work/webhook.secret"
chmod 600 "$work/demo.url" "$work/webhook.secret"
port=$(free_port)
cat >"$work/sever.toml" <<TOML
protected_logins = ["postgres"]

[server]
listen = "127.0.0.1:$port"

[store]
url = "sqlite://$work/sever.db?mode=rwc"

[webhooks]
secrets = [{ file = "$work/webhook.secret" }]

[termination]
timeout = "5s"
verify_timeout = "3s"

[[operators]]
name = "demo"
token_sha256 = "$(sha "$token")"

[targets.demo]
engine = "postgres"
url = { file = "$work/demo.url" }
connect_timeout = "2s"

[credentials.orders]
logins = [{ target = "demo", login = "app_orders" }]

[credentials.reports]
logins = [{ target = "demo", login = "app_reports" }]

[credentials.etl]
logins = [{ target = "demo", login = "batch_etl" }]
TOML

echo "starting sever on 127.0.0.1:$port"
SEVER_LOG=${SEVER_LOG:-warn} "$sever" --config "$work/sever.toml" serve >"$work/sever.log" 2>&1 &
sever_pid=$!
ready=""
for _ in $(seq 150); do
    if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$sever_pid" 2>/dev/null || { sever_pid=""; fail "sever exited"; }
    sleep 0.1
done
[ -n "$ready" ] || fail "sever did not become ready"

if [ -n "$check" ]; then
    # The demo sessions are listed (the blocked one once its wait shows), names and all.
    for _ in $(seq 50); do
        listing=$(curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/sessions") \
            || fail "GET /v1/sessions failed"
        if python3 -c '
import json, sys
sessions = json.loads(sys.argv[1])["sessions"]
logins = {s["login"] for s in sessions}
apps = {s["application_name"] for s in sessions}
want = {"app_orders", "app_reports", "batch_etl", "dba"}
ok = want <= logins and "<img src=x onerror=alert(1)>" in apps
ok = ok and any(s["blocked_by"] for s in sessions if s["login"] == "app_reports")
ok = ok and any(s["state"] == "idle in transaction" for s in sessions)
sys.exit(0 if ok else 1)' "$listing"; then
            echo "try.sh --check: ok (sever lists the demo sessions)"
            exit 0
        fi
        sleep 0.2
    done
    fail "GET /v1/sessions does not list the demo sessions: $listing"
fi

cat <<EOF

sever is running against a throwaway PostgreSQL with demo sessions.

  console:         http://127.0.0.1:$port/console
  operator token:  $token

  from a shell:    curl -H "Authorization: Bearer $token" http://127.0.0.1:$port/v1/sessions
                   curl -H "Authorization: Bearer $token" http://127.0.0.1:$port/v1/targets
  PostgreSQL:      psql postgres://dba:$demo_password@127.0.0.1:$pg_port/shop

Ctrl-C stops sever, the demo sessions and PostgreSQL, and removes $work.
EOF
wait "$sever_pid" || true
sever_pid=""
fail "sever stopped"
