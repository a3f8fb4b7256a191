# Sourced by scripts/test.sh, scripts/bench.sh and scripts/try.sh: puts the PostgreSQL and
# MariaDB server binaries on PATH, installing the Debian packages when running as root and
# they are missing. The tests and benchmarks start their own throwaway servers from these
# binaries. SEVER_SERVERS=postgres skips MariaDB (scripts/try.sh needs PostgreSQL only).

# --- PostgreSQL server binaries (initdb, pg_ctl, postgres) ---------------------------------
if ! command -v initdb >/dev/null 2>&1; then
    pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$pgbin" ]; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "installing PostgreSQL server binaries (Debian package postgresql)"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
            pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
        else
            echo "error: PostgreSQL server binaries (initdb) not found; install the postgresql package" >&2
            exit 1
        fi
    fi
    export PATH="$pgbin:$PATH"
fi
# --- MariaDB server binaries (mariadb-install-db, mariadbd) for the MySQL engine's tests -----
if [ "${SEVER_SERVERS:-}" != postgres ] && ! command -v mariadbd >/dev/null 2>&1 \
    && [ ! -x /usr/sbin/mariadbd ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing MariaDB server binaries (Debian package mariadb-server)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
    else
        echo "error: MariaDB server binaries (mariadbd) not found; install the mariadb-server package" >&2
        exit 1
    fi
fi
export PATH="$PATH:/usr/sbin"

# As root, the harness runs the server as the 'postgres' OS user (initdb refuses root).
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi

