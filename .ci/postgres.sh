#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the tuner's shared-storage test (tests/test_tuner_workers.py).
#
#   eval "$(bash .ci/postgres.sh)"       # start (installing what is missing); exports DELTALAB_TEST_POSTGRES_URL,
#                                         # and DELTALAB_TEST_POSTGRES_STARTED=1 when this call started the server
#   bash .ci/postgres.sh stop             # stop it and delete the cluster
#
# Installs Debian's `postgresql` (apt-get) when no server binaries are present, and `psycopg2-binary` into the
# test interpreter when it cannot import psycopg2 (PYTHON, default .venv/bin/python, else python3). The cluster
# lives under /tmp (PGDATA_DIR, default /tmp/deltalab-pg), owned by the `postgres` user (the server refuses to
# run as root), listens on 127.0.0.1 only (PGPORT, default 55432), trusts local connections, and holds one
# database, deltalab_test. Idempotent: a running server is reused. Only the export line goes to stdout
# (for eval); progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

PGDATA_DIR=${PGDATA_DIR:-/tmp/deltalab-pg}
PGPORT=${PGPORT:-55432}
DB=deltalab_test
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

log() { echo "postgres.sh: $*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        log "need root (or sudo): the server runs as user postgres"
        exit 1
    fi
fi

pg_bin() {  # the newest installed server's bin folder
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; fi
}

as_postgres() { $SUDO runuser -u postgres -- "$@"; }

if [ "${1:-}" = "stop" ]; then
    BIN=$(pg_bin)
    if [ -n "$BIN" ] && [ -f "$PGDATA_DIR/data/postmaster.pid" ]; then
        as_postgres "$BIN/pg_ctl" -D "$PGDATA_DIR/data" -m fast -w stop >&2 || true
    fi
    $SUDO rm -rf "$PGDATA_DIR"
    log "stopped and removed $PGDATA_DIR"
    exit 0
fi

# ---- server binaries (Debian 12: postgresql-15)
if [ -z "$(pg_bin)" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "no PostgreSQL server and no apt-get to install one"
        exit 1
    fi
    log "installing Debian's postgresql"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >&2 || { sleep 5; $SUDO apt-get update -qq >&2; }
    $SUDO apt-get install -y -qq --no-install-recommends postgresql >&2 \
        || { sleep 5; $SUDO apt-get install -y -qq --no-install-recommends postgresql >&2; }
fi
BIN=$(pg_bin)
if [ -z "$BIN" ]; then
    log "postgresql installed, but no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
    exit 1
fi
id postgres >/dev/null 2>&1 || { log "the postgresql package did not create user postgres"; exit 1; }

# ---- Python driver for SQLAlchemy / Optuna
if ! "$PYTHON" -c "import psycopg2" 2>/dev/null; then
    log "installing psycopg2-binary into $PYTHON"
    "$PYTHON" -m pip install -q --disable-pip-version-check "psycopg2-binary>=2.9" >&2
fi

# ---- the throwaway cluster
DATA="$PGDATA_DIR/data"
if ! as_postgres "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    $SUDO mkdir -p "$PGDATA_DIR"
    $SUDO chown postgres:postgres "$PGDATA_DIR"
    $SUDO chmod 700 "$PGDATA_DIR"
    if [ ! -f "$DATA/PG_VERSION" ]; then
        log "initdb $DATA"
        as_postgres "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale >/dev/null
    fi
    log "starting $("$BIN/postgres" --version) on 127.0.0.1:$PGPORT"
    # sockets in the cluster folder (not /run/postgresql, which may not exist in a container)
    as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$PGDATA_DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGDATA_DIR -c max_connections=200 -c fsync=off" start >&2 \
        || { log "server did not start:"; tail -n 30 "$PGDATA_DIR/server.log" >&2 || true; exit 1; }
    STARTED=1
else
    log "reusing the running server of $DATA"
fi

PSQL=("$BIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -v ON_ERROR_STOP=1 -qtA)
if [ "$(as_postgres "${PSQL[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
    as_postgres "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB" >&2
fi

URL="postgresql+psycopg2://postgres@127.0.0.1:$PGPORT/$DB"
"$PYTHON" - "$URL" <<'EOF' >&2
import sys
import sqlalchemy

with sqlalchemy.create_engine(sys.argv[1]).connect() as conn:
    version = conn.execute(sqlalchemy.text("select version()")).scalar()
print("postgres.sh: connected:", version.split(",")[0])
EOF
echo "export DELTALAB_TEST_POSTGRES_URL=$URL"
if [ "${STARTED:-0}" = 1 ]; then echo "export DELTALAB_TEST_POSTGRES_STARTED=1"; fi
