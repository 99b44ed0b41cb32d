#!/usr/bin/env bash
# The Debian package test (tests/e2e/package.rs): builds the .deb (scripts/package.sh), installs it with
# apt-get on this machine's PostgreSQL 15, sees a rule run, removes it; then the packages for 14,
# 16, 17 and 18, each unpacked into that version's test server. It replaces whatever
# pg_token_cleanup files the system PostgreSQL had, so the development build is installed again at
# the end (cargo pgrx install), for the other tests and the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/pg_env.sh
deb=$(bash scripts/package.sh)
status=0
DEB=$PWD/$deb cargo test --test e2e -- package::the_deb_installs --ignored --nocapture || status=$?
cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null 2>&1

# The packages for 14, 16, 17 and 18: Debian bookworm has no such PostgreSQL to install them on, so
# each is unpacked into that version's test server (scripts/pg_servers.sh) and checked there.
source scripts/pg_servers.sh
for deb in $(bash scripts/package.sh 14 16 17 18); do
    major=$(dpkg-deb --field "$deb" Package | sed -E 's/^postgresql-([0-9]+)-.*/\1/')
    server=$(server_for "$major")
    echo "==> $deb in PostgreSQL $major ($server)"
    DEB=$PWD/$deb PG_BIN=$server/bin cargo test --test e2e -- package::a_package_unpacked \
        --ignored --nocapture || status=$?
done
exit $status
