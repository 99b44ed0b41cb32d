#!/usr/bin/env bash
# The Citus suite (tests/e2e/citus.rs): builds Citus 13.2.2 into a private PostgreSQL 15 with this
# tree's extension (scripts/citus.sh, cached under target/citus) and runs the suite there, one test
# at a time (each starts a coordinator and two workers). Citus's sources are not in any registry:
# without ../shared/citus/ (a fresh clone elsewhere) it says so and skips, successfully.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=$(bash scripts/citus.sh)
status=$?
if [ $status -eq 3 ]; then
    echo "SKIPPED: the Citus suite needs Citus's sources in ../shared/citus/ (see scripts/citus.sh)"
    exit 0
fi
[ $status -eq 0 ] || exit $status
PG_BIN=$bin cargo test --test e2e -- citus:: --ignored --test-threads=1
