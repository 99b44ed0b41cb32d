#!/usr/bin/env bash
# Runs every test, in this order, and prints how long each part took and which failed:
#   1. PostgreSQL 15 (Debian's server, the development path): `cargo pgrx test pg15` — plain
#      #[test]s, #[pg_test]s in pgrx's test cluster, and the end-to-end suites in tests/ against
#      clusters they start themselves, load test and soak included (SOAK_SECS, default 180);
#      then docs/reliability.md from their figures;
#   2. the pg_regress suite of the SQL surface (scripts/regress.sh);
#   3. PostgreSQL 14, 16, 17 and 18: build for each and run the end-to-end suites there
#      (scripts/matrix.sh; the soak stays on 15);
#   4. the upgrades from the released 0.1.0 to 0.7.0 (scripts/upgrade_test.sh);
#   5. the Debian package: install, run a rule, remove (scripts/package_test.sh);
#   6. Citus 13.2.2 on PostgreSQL 15 and Citus 14.0.1 on PostgreSQL 18: rules on distributed tables
#      on a coordinator and two workers (scripts/citus_test.sh; skipped, saying so, without
#      Citus's sources in ../shared/citus/).
# Installs what is missing first (scripts/setup.sh). Idempotent. Every part runs even when an
# earlier one failed; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
source scripts/pg_env.sh

# PostgreSQL refuses to run as root: pgrx's test cluster runs as the postgres OS user, in a data
# directory that user owns.
if [ "$(id -u)" = 0 ]; then
    export CARGO_PGRX_TEST_RUNAS=postgres
    install -d -o postgres /tmp/pg_token_cleanup_pgrx_test
    export CARGO_PGRX_TEST_PGDATA=/tmp/pg_token_cleanup_pgrx_test/data
fi
export SOAK_SECS=${SOAK_SECS:-180}

results=()
failed=()
part() {
    local name=$1 started=$SECONDS
    shift
    echo "==> $name"
    if "$@"; then
        results+=("ok      $(printf '%5d' $((SECONDS - started))) s  $name")
    else
        results+=("FAILED  $(printf '%5d' $((SECONDS - started))) s  $name")
        failed+=("$name")
    fi
}

postgres15() {
    # cargo pgrx test installs the extension into the system PostgreSQL 15 before the tests run;
    # the end-to-end tests in tests/ use that installation.
    rm -rf target/reliability
    RESULTS_DIR=$PWD/target/reliability cargo pgrx test pg15 && bash scripts/reliability_report.sh
}

part "PostgreSQL 15: unit, #[pg_test], end-to-end, load and ${SOAK_SECS} s soak" postgres15
part "pg_regress: the SQL surface" bash scripts/regress.sh
part "PostgreSQL 14, 16, 17, 18: build and end-to-end suites" bash scripts/matrix.sh
part "upgrades from 0.1.0, 0.2.0, 0.3.0, 0.4.0, 0.5.0, 0.6.0 and 0.7.0 to this version" bash scripts/upgrade_test.sh
part "Debian package" bash scripts/package_test.sh
part "Citus 13.2.2 on PostgreSQL 15 and 14.0.1 on 18: distributed tables" bash scripts/citus_test.sh

echo
echo "==> summary (total $SECONDS s)"
printf '%s\n' "${results[@]}"
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
