# Sourced by scripts/demo.sh and bench/*.sh: a throwaway PostgreSQL cluster (the one PG_BIN names,
# see scripts/pg_env.sh) in DIR on PORT, run as the postgres OS user when we are root (PostgreSQL
# refuses root), with pg_token_cleanup preloaded.
#   start_cluster DIR PORT [extra postgresql.conf lines…]   (removes a previous cluster in DIR first)
#   stop_cluster DIR
#   psql_at PORT [psql args…]
source "$(dirname "${BASH_SOURCE[0]}")/pg_env.sh"

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

stop_cluster() { as_postgres "$PG_BIN/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null 2>&1 || true; }

start_cluster() {
    local dir=$1 port=$2
    shift 2
    stop_cluster "$dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    as_postgres "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    {
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$dir'"
        echo "shared_preload_libraries = 'pg_token_cleanup'"
        for line in "$@"; do echo "$line"; done
    } >> "$dir/data/postgresql.conf"
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
}

psql_at() {
    local port=$1
    shift
    command psql -X -q -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 "$@"
}
