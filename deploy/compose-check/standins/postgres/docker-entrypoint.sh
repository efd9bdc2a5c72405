#!/bin/sh
# The official postgres image's start-up contract, in brief: as root, own the data directory
# and drop to `postgres`; on an empty PGDATA, initdb with POSTGRES_USER and POSTGRES_PASSWORD
# (or the content of POSTGRES_PASSWORD_FILE), create POSTGRES_DB, and only then listen on TCP
# (so a health check over TCP never sees the initialising server); then run the server in the
# foreground.
set -eu

# As the official image's file_env: the file is read before the drop to `postgres` (a compose
# secret keeps its owner and mode, which need not let `postgres` read it), its content becomes
# POSTGRES_PASSWORD (without the final newlines) and the _FILE variable goes.
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        echo "postgres stand-in: both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set" >&2
        exit 1
    fi
    POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
    export POSTGRES_PASSWORD
    unset POSTGRES_PASSWORD_FILE
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$(dirname "$PGDATA")" /var/run/postgresql
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-postgres}" != postgres ]; then
    exec "$@"
fi
shift

: "${POSTGRES_PASSWORD:?the postgres stand-in needs POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, as the official image does}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    rm -f "$pwfile"
    printf "host all all all scram-sha-256\n" >> "$PGDATA/pg_hba.conf"
    # A socket-only server for the set-up, as the official image does.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres \
            -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres stand-in: initialised $PGDATA for $POSTGRES_USER/$POSTGRES_DB"
fi

exec postgres -c listen_addresses='*' "$@"
