#!/usr/bin/env bash
# The pg_regress suite: tests/pg_regress/sql/*.sql against tests/pg_regress/expected/*.out, the SQL
# surface of the extension as a user meets it — validation errors with their SQLSTATE, detail and
# hint, next_runs, preview, explain, row-level security as two roles. setup.sql runs first, then the
# others in name order, in one database.
#
# The layout is `cargo pgrx regress`'s, and a developer who is not root can run that (`cargo pgrx
# regress pg15 --postgresql-conf shared_preload_libraries=pg_token_cleanup`). As root it cannot:
# cargo-pgrx 0.18.1 runs initdb and pg_ctl of its own cluster as the calling user, which PostgreSQL
# refuses for root, and its --runas reaches only createdb. So this script does what it does, the
# same way: install the extension (cargo pgrx install), start a cluster (as the postgres OS user,
# with the library preloaded and client_min_messages = warning), and run PostgreSQL's pg_regress
# with pgrx's options (--use-existing, psql's VERBOSITY terse unless a file sets it).
#   bash scripts/regress.sh            run the suite (output in target/pg_regress)
#   bash scripts/regress.sh --auto     after a deliberate change: take the new output as expected
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/pg_env.sh
source scripts/cluster.sh

cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null 2>&1
DIR=/tmp/pg_token_cleanup_regress
PORT=54331
start_cluster "$DIR" "$PORT" "client_min_messages = warning" "pg_token_cleanup.enabled = off" "timezone = UTC"
trap 'stop_cluster "$DIR"' EXIT
psql_at "$PORT" -d postgres -c "CREATE DATABASE pg_token_cleanup_regress" >/dev/null

out=$PWD/target/pg_regress
rm -rf "$out" && mkdir -p "$out"
# psql through a filter: the expected output pins messages, SQLSTATEs, details and hints, not the
# source lines that raised them (LOCATION, which VERBOSITY verbose adds).
printf '#!/bin/bash\n$* -v VERBOSITY=terse 2>&1 | sed "/^LOCATION:  /d"\n' >"$out/launcher.sh"
chmod +x "$out/launcher.sh"
tests=(setup)
for f in tests/pg_regress/sql/*.sql; do
    name=$(basename "$f" .sql)
    [ "$name" = setup ] || tests+=("$name")
done
status=0
"$($PG_CONFIG --pkglibdir)/pgxs/src/test/regress/pg_regress" \
    --host 127.0.0.1 --port "$PORT" --user postgres --use-existing --dbname=pg_token_cleanup_regress \
    --inputdir=tests/pg_regress --outputdir="$out" --launcher="$out/launcher.sh" "${tests[@]}" \
    || status=$?
if [ "${1:-}" = --auto ]; then
    cp "$out"/results/*.out tests/pg_regress/expected/
    echo "expected output updated from $out/results"
    exit 0
fi
[ $status = 0 ] || cat "$out/regression.diffs"
exit $status
