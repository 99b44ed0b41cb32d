#!/usr/bin/env bash
# The Debian package test (tests/e2e/package.rs): builds the .deb (scripts/package.sh), installs it with
# apt-get on this machine's PostgreSQL 15, sees a rule run, removes it. It replaces whatever
# pg_token_cleanup files the system PostgreSQL had, so the development build is installed again at
# the end (cargo pgrx install), for the other tests and the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/pg_env.sh
deb=$(bash scripts/package.sh)
status=0
DEB=$PWD/$deb cargo test --test e2e -- package:: --ignored --nocapture || status=$?
cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null 2>&1
exit $status
