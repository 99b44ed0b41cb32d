#!/usr/bin/env bash
# The Citus benchmark (bench/citus.py, writes docs/citus_benchmark.md): builds Citus 13.2.2 and this
# tree's extension (release) into a private PostgreSQL 15 (scripts/citus.sh), then purges a
# 1,000,000-row distributed table three ways side by side, with and without a checkpoint
# before. About 4 minutes on 2 cores.
#   ROWS=2000000 REPEAT=3 bash bench/citus.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CITUS_BIN=$(bash scripts/citus.sh)
export CITUS_BIN
python3 bench/citus.py
