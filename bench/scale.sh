#!/usr/bin/env bash
# Scale: one run against one plain DELETE as the table grows, and a run with parallel_workers = 2
# (scenario A's table: a quarter revoked, a quarter expired, interleaved, so half of every page
# goes; no workload). For each size in SIZES, REPEAT rounds; each round purges a fresh copy of the
# same table once per side, in turn (plain DELETE, run(), run() with parallel_workers = 2), after
# VACUUM ANALYZE and CHECKPOINT. Default server settings (max_wal_size 1GB, so checkpoints happen
# mid-purge at 20M rows, as they would), autovacuum off. Writes docs/scale.md: the median of each
# side per size, its ratio to the plain DELETE's median, and every time measured.
#   SIZES="2000000 20000000" REPEAT=2 bash bench/scale.sh      # about 25 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null 2>&1
DIR=/tmp/pg_token_cleanup_scale; PORT=54362
start_cluster "$DIR" "$PORT" "pg_token_cleanup.enabled = off" "autovacuum = off" ${SETTINGS:+"$SETTINGS"}
trap 'stop_cluster "$DIR"' EXIT
q() { psql_at "$PORT" -d postgres -Atq "$@"; }
q -c "CREATE EXTENSION pg_token_cleanup"
results=$(mktemp)
for rows in ${SIZES:-2000000 20000000}; do
  q -c "DROP TABLE IF EXISTS source_a; CREATE UNLOGGED TABLE source_a AS
        SELECT g::bigint AS id, (g % 100000)::bigint AS user_id, sha256(g::text::bytea) AS token_hash,
               g % 4 = 0 AS revoked,
               now() + CASE WHEN g % 4 = 1 THEN -interval '1 day' ELSE interval '30 days' END + (g % 1000) * interval '1 second' AS expires_at,
               now() - interval '60 days' AS created_at
          FROM generate_series(1, $rows) g"
  for round in $(seq 1 "${REPEAT:-2}"); do
    for side in delete run parallel; do
      workers=1; [ $side = parallel ] && workers=2
      q -c "DROP TABLE IF EXISTS public.refresh_tokens; DELETE FROM token_cleanup.rules;
            CREATE TABLE public.refresh_tokens (id bigserial PRIMARY KEY, user_id bigint, token_hash bytea, revoked boolean, expires_at timestamptz, created_at timestamptz);
            INSERT INTO public.refresh_tokens SELECT * FROM source_a;
            CREATE INDEX ON public.refresh_tokens (user_id); CREATE INDEX ON public.refresh_tokens (expires_at);
            INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, parallel_workers)
              VALUES ('bench', 'public.refresh_tokens', 'revoked OR expires_at < now()', '@daily', $workers);"
      q -c "VACUUM ANALYZE public.refresh_tokens"
      q -c "CHECKPOINT"
      t0=$(date +%s.%N)
      if [ $side = delete ]; then
        q -c "DELETE FROM public.refresh_tokens WHERE revoked OR expires_at < now()"
      else
        q -c "SELECT rows_deleted FROM token_cleanup.run('bench')" >/dev/null
      fi
      t1=$(date +%s.%N)
      deleted=$(( rows - $(q -c "SELECT count(*) FROM public.refresh_tokens") ))
      got=-; [ $side = delete ] || got=$(q -c "SELECT workers FROM token_cleanup.runs ORDER BY id DESC LIMIT 1")
      echo "$rows $side $round $(python3 -c "print(f'{$t1 - $t0:.2f}')") $deleted $got" | tee -a "$results"
    done
  done
done
python3 bench/scale_report.py "$results" > docs/scale.md
echo "wrote docs/scale.md"
