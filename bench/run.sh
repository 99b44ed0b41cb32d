#!/usr/bin/env bash
# Reruns every benchmark with one command: installs what is missing (the README's setup, pg_cron,
# matplotlib), builds and installs the extension in release mode, then runs, each on a cluster of
# its own: bench/overhead.py, offcpu.py, oncpu.py and replica_lag.py (their own docs/*.md), and last
# bench/bench.py, which writes docs/benchmarks.md with scenarios A-C and the others' reports
# included, and docs/img/*.png. Takes about 45 minutes on 2 cores.
#   SKIP=DEFG bash bench/run.sh          # scenarios A-C only (letters as in docs/benchmarks.md)
#   ROWS=20000000 REPEAT=1 RATE_LIMITS= WAL_LIMITS= YIELD=0 NAIVE=0 SKIP=BCDEFG bash bench/run.sh
#                                        # the 20M-row variant of A, recorded beside A as A20M
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/pg_env.sh
# pg_cron (a contender in A), pg_wait_sampling, strace and perf (E and F).
missing=()
for pkg in postgresql-15-cron postgresql-15-pg-wait-sampling strace linux-perf; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install --quiet matplotlib
echo "==> cargo pgrx install --release"
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
export PG_BIN
# D-G write their own docs/*.md, which bench.py (last) includes. A part that fails is reported and
# the others still run; its previous report stays in the docs.
skip=${SKIP:-}
failed=()
extra() {
    local letter=$1 script=$2
    [[ $skip == *$letter* ]] && return 0
    echo "==> $letter: $script"
    python3 "$script" >"target/bench-$letter.log" 2>&1 \
        || { echo "$letter FAILED: $script (target/bench-$letter.log)"; failed+=("$letter"); }
}
mkdir -p target
extra D bench/overhead.py
extra E bench/offcpu.py
extra F bench/oncpu.py
extra G bench/replica_lag.py
python3 bench/bench.py
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
