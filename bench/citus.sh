#!/usr/bin/env bash
# The Citus benchmark (bench/citus.py, writes docs/citus_benchmark.md): builds Citus 13.2.2 and this
# tree's extension (release) into a private PostgreSQL 15 (scripts/citus.sh), adds Debian's pg_cron
# to it, then purges a 1,000,000-row distributed table four ways side by side, with and without a
# checkpoint before. About 8 minutes on 2 cores (pg_cron's jobs wait for their minute).
#   ROWS=2000000 REPEAT=3 bash bench/citus.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CITUS_BIN=$(bash scripts/citus.sh 13)
export CITUS_BIN
if ! dpkg-query -W -f='${Status}' postgresql-15-cron 2>/dev/null | grep -q "install ok installed"; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15-cron
fi
root=target/citus/pg15
cp /usr/lib/postgresql/15/lib/pg_cron.so "$root/usr/lib/postgresql/15/lib/"
cp /usr/share/postgresql/15/extension/pg_cron* "$root/usr/share/postgresql/15/extension/"
python3 bench/citus.py
