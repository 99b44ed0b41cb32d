#!/usr/bin/env bash
# Runs every test: plain #[test]s (schedules, agenda), #[pg_test]s (SQL API and validation errors) in
# pgrx's test cluster, and the end-to-end tests in tests/ (worker, reliability under faults, hostile
# input, load and soak), which start their own clusters with the library preloaded; then writes
# docs/reliability.md from their figures. Installs what is missing first (scripts/setup.sh).
# Idempotent.
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
# end-to-end tests in tests/ use that installation. The load test soaks for SOAK_SECS (default 600).
rm -rf target/reliability
cargo pgrx test pg15
bash scripts/reliability_report.sh
