#!/usr/bin/env bash
# Reruns every benchmark with one command: installs what is missing (the README's setup, pg_cron,
# matplotlib), builds and installs the extension in release mode, runs bench/bench.py, which starts
# its own cluster and writes docs/benchmarks.md and docs/img/*.png. Takes about 20 minutes on 2 cores.
#   ROWS=20000000 bash bench/run.sh     # the large bulk-purge variant
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/pg_env.sh
dpkg-query -W -f='${Status}' postgresql-15-cron 2>/dev/null | grep -q "install ok installed" \
    || { apt-get update -q; DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15-cron; }
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install --quiet matplotlib
echo "==> cargo pgrx install --release"
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
python3 bench/bench.py
