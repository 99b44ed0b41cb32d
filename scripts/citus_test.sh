#!/usr/bin/env bash
# The Citus suite (tests/e2e/citus/) on Citus 13.2.2 with PostgreSQL 15 and on Citus 14.0.1 with
# PostgreSQL 18.6: each built with this tree's extension by scripts/citus.sh (cached under
# target/citus), the suite run one test at a time (each starts a coordinator and two workers).
# Citus's sources are not in any registry: without ../shared/citus/ (a fresh clone elsewhere) it
# says so and skips, successfully.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for major in 13 14; do
    started=$SECONDS
    bin=$(bash scripts/citus.sh "$major")
    built=$?
    if [ $built -eq 3 ]; then
        echo "SKIPPED: the Citus suite needs Citus's sources in ../shared/citus/ (see scripts/citus.sh)"
        exit 0
    fi
    if [ $built -ne 0 ]; then
        echo "Citus $major: build FAILED"; status=1; continue
    fi
    log=target/citus/suite$major.log
    if PG_BIN=$bin cargo test --test e2e -- citus:: --ignored --test-threads=1 >"$log" 2>&1; then
        echo "Citus $major: ok ($(LD_LIBRARY_PATH="$bin/../lib" "$bin/postgres" --version); $((SECONDS - started)) s)"
    else
        echo "Citus $major: FAILED (output: $log)"
        grep -E "^test .* FAILED|panicked at" "$log" | head -6 | sed "s/^/Citus $major:   /"
        status=1
    fi
done
exit $status
