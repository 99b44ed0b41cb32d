#!/usr/bin/env bash
# Reruns every benchmark with one command: installs what is missing (the README's setup, pg_cron,
# matplotlib), builds and installs the extension in release mode, then runs, each on a cluster of
# its own: bench/overhead.py, offcpu.py, oncpu.py and replica_lag.py (D-G, their own docs/*.md),
# bench/scale.sh (S, docs/scale.md: 2M and 20M rows without a workload, a parallel run beside),
# bench/bench.py (scenarios A-C), and bench/bench.py again at 20M rows (A20M, recorded beside A),
# which writes docs/benchmarks.md with every scenario and the others' reports included, and
# docs/img/*.png. Takes about two hours on 2 cores.
#   SKIP=DEFG bash bench/run.sh          # letters as in docs/benchmarks.md (L: A20M); a skipped
#                                        # scenario keeps its last figures (bench/out/), dated
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
if [[ $skip != *S* ]]; then
    echo "==> S: bench/scale.sh"
    bash bench/scale.sh >target/bench-S.log 2>&1 || { echo "S FAILED: bench/scale.sh (target/bench-S.log)"; failed+=(S); }
fi
python3 bench/bench.py
# A20M: scenario A at 20M rows, two rounds of each of the plain DELETE, a run and a parallel run,
# recorded beside A (the pacing variants and the naive loop only at 2M).
if [[ $skip != *L* ]]; then
    echo "==> A20M: scenario A at 20M rows"
    ROWS=20000000 REPEAT=2 RATE_LIMITS= WAL_LIMITS= YIELD=0 NAIVE=0 SKIP=BC python3 bench/bench.py
fi
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
