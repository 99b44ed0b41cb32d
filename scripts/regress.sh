#!/usr/bin/env bash
# The pg_regress suite (tests/pg_regress/sql/*.sql against tests/pg_regress/expected/*.out): the SQL
# surface of the extension — validation errors with their SQLSTATE, detail and hint, next_runs,
# preview, explain, row-level security as two roles. `cargo pgrx regress` installs the extension into
# Debian's PostgreSQL 15 and runs the files in pgrx's own cluster, with the library preloaded.
#   bash scripts/regress.sh            run the suite
#   bash scripts/regress.sh --auto     after a deliberate change: accept the new output as expected
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/pg_env.sh
args=(--resetdb --postgresql-conf "shared_preload_libraries=pg_token_cleanup")
# PostgreSQL refuses root: the cluster runs as the postgres OS user, in a directory it owns.
if [ "$(id -u)" = 0 ]; then
    install -d -o postgres /tmp/pg_token_cleanup_regress
    args+=(--runas postgres --pgdata /tmp/pg_token_cleanup_regress/data)
fi
cargo pgrx regress pg15 "${args[@]}" "$@"
