#!/usr/bin/env bash
# Runs every test: plain #[test]s (schedules, agenda), #[pg_test]s (SQL API and validation errors) in
# pgrx's test cluster, and the end-to-end worker tests in tests/, which start their own clusters
# with the library preloaded. Installs what is missing first (scripts/setup.sh). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# PostgreSQL refuses to run as root: pgrx's test cluster runs as the postgres OS user, in a data
# directory that user owns.
if [ "$(id -u)" = 0 ]; then
    export CARGO_PGRX_TEST_RUNAS=postgres
    install -d -o postgres /tmp/pg_token_cleanup_pgrx_test
    export CARGO_PGRX_TEST_PGDATA=/tmp/pg_token_cleanup_pgrx_test/data
fi
# cargo pgrx test installs the extension into the system PostgreSQL 15 before the tests run; the
# end-to-end tests in tests/ use that installation.
cargo pgrx test pg15
