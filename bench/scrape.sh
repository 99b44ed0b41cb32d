#!/usr/bin/env bash
# What one scrape costs with many rules (writes docs/scrape_benchmark.md): a throwaway cluster with
# the development build, RULES rules (default 10,000) on 20 tables each holding 100,000 rows half of
# them expired, one rule in ten run once (so they have totals, a last run and a backlog estimate);
# then, alternating, REPEAT reads (default 5) of token_cleanup.prometheus (what the shipped exporter
# configuration reads) and of the older token_cleanup.metrics view (which plans every enabled rule's
# condition for its backlog), each timed by the server (EXPLAIN ANALYZE). Medians, side by side.
#   RULES=10000 REPEAT=5 bash bench/scrape.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
RULES=${RULES:-10000}
REPEAT=${REPEAT:-5}
DIR=/tmp/pg_token_cleanup_scrape_bench
PORT=54351
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null 2>&1
start_cluster "$DIR" "$PORT" "pg_token_cleanup.enabled = off"
trap 'stop_cluster "$DIR"' EXIT
q() { psql_at "$PORT" -d postgres -Atq "$@"; }
q -c "CREATE EXTENSION pg_token_cleanup"
for t in $(seq 1 20); do
    q -c "CREATE TABLE public.tokens_$t (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL);
          INSERT INTO public.tokens_$t (expires_at)
          SELECT now() + (CASE WHEN g % 2 = 0 THEN -1 ELSE 1 END) * interval '1 day' FROM generate_series(1, 100000) g;
          CREATE INDEX ON public.tokens_$t (expires_at); ANALYZE public.tokens_$t;"
done
q -c "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
      SELECT 'rule_' || g, 'public.tokens_' || (1 + g % 20), 'expires_at < now() - interval ''' || g || ' seconds''', '@hourly'
        FROM generate_series(1, $RULES) g"
# One rule in ten runs once: its totals, last run and backlog estimate exist, as on a live server.
q -c "SELECT count(*) FROM (SELECT token_cleanup.run(name) FROM token_cleanup.rules WHERE id % 10 = 0) r" >/dev/null
q -c "VACUUM ANALYZE"
time_of() {
    q -c "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM token_cleanup.$1" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])'
}
new=(); old=()
for _ in $(seq 1 "$REPEAT"); do
    new+=("$(time_of prometheus)")
    old+=("$(time_of metrics)")
done
series=$(q -c "SELECT count(*) FROM token_cleanup.prometheus")
python3 - "$RULES" "$series" "${new[*]}" "${old[*]}" <<'PY'
import statistics, sys
rules, series = int(sys.argv[1]), int(sys.argv[2])
new = [float(x) for x in sys.argv[3].split()]
old = [float(x) for x in sys.argv[4].split()]
mn, mo = statistics.median(new), statistics.median(old)
with open("docs/scrape_benchmark.md", "w") as f:
    f.write(f"""# What a scrape costs

Written by `RULES={rules} REPEAT={len(new)} bash bench/scrape.sh`: {rules:,} rules on 20 tables of
100,000 rows (half expired, an index on the expiry column), one rule in ten run once; the two views
read alternately, each read timed by the server (EXPLAIN ANALYZE), on this machine kind (2 cores).

| view | series | median | reads (ms) |
|---|---|---|---|
| `token_cleanup.prometheus` (the shipped exporter configuration) | {series:,} | {mn:.0f} ms | {", ".join(f"{x:.0f}" for x in new)} |
| `token_cleanup.metrics` (older; plans every enabled rule's condition) | | {mo:.0f} ms | {", ".join(f"{x:.0f}" for x in old)} |

`prometheus` reads {mo / mn:.1f}× faster, about {mn * 1000 / rules:.0f} µs per rule: it plans no
condition (the backlog is what each run found), reads each rule's last run
through an index and computes each schedule's interval in Rust.
""")
print(open("docs/scrape_benchmark.md").read())
PY
