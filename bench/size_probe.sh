#!/usr/bin/env bash
# A probe for the growth of a run's time with table size against one plain DELETE (scenario A's
# table: half purgeable, interleaved): for each size in SIZES, a fresh copy for each side, VACUUM
# ANALYZE, CHECKPOINT, statistics reset, then the purge; prints the wall time and the deltas of
# pg_stat_wal (records, full-page images, bytes), pg_stat_bgwriter (checkpoints, buffers written by
# backends, by the background writer, by checkpoints) and pg_statio (heap and index blocks read and
# hit), and the run's batches and longest batch. One pass, default settings, autovacuum off; a
# probe to find where to look, not a benchmark (bench/run.sh has the medians).
#   SIZES="2000000 20000000" bash bench/size_probe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null 2>&1
DIR=/tmp/pg_token_cleanup_size_probe; PORT=54361
# SETTINGS: more postgresql.conf lines, e.g. SETTINGS="max_wal_size = 16GB" (no checkpoint mid-purge).
start_cluster "$DIR" "$PORT" "pg_token_cleanup.enabled = off" "autovacuum = off" ${SETTINGS:+"$SETTINGS"}
trap 'stop_cluster "$DIR"' EXIT
q() { psql_at "$PORT" -d postgres -Atq "$@"; }
q -c "CREATE EXTENSION pg_token_cleanup"
snap() {
  q -c "SELECT w.wal_records||' '||w.wal_fpi||' '||w.wal_bytes||' '||b.checkpoints_timed+b.checkpoints_req||' '||b.buffers_backend||' '||b.buffers_clean||' '||b.buffers_checkpoint||' '||coalesce(s.heap_blks_read,0)||' '||coalesce(s.heap_blks_hit,0)||' '||coalesce(s.idx_blks_read,0)||' '||coalesce(s.idx_blks_hit,0)
        FROM pg_stat_wal w, pg_stat_bgwriter b LEFT JOIN pg_statio_user_tables s ON s.relname = 'refresh_tokens'"
}
for rows in ${SIZES:-2000000 20000000}; do
  q -c "DROP TABLE IF EXISTS source_a; CREATE UNLOGGED TABLE source_a AS
        SELECT g::bigint AS id, (g % 100000)::bigint AS user_id, sha256(g::text::bytea) AS token_hash,
               g % 4 = 0 AS revoked,
               now() + CASE WHEN g % 4 = 1 THEN -interval '1 day' ELSE interval '30 days' END + (g % 1000) * interval '1 second' AS expires_at,
               now() - interval '60 days' AS created_at
          FROM generate_series(1, $rows) g"
  for side in delete run; do
    q -c "DROP TABLE IF EXISTS public.refresh_tokens; DELETE FROM token_cleanup.rules;
          CREATE TABLE public.refresh_tokens (id bigserial PRIMARY KEY, user_id bigint, token_hash bytea, revoked boolean, expires_at timestamptz, created_at timestamptz);
          INSERT INTO public.refresh_tokens SELECT * FROM source_a;
          CREATE INDEX ON public.refresh_tokens (user_id); CREATE INDEX ON public.refresh_tokens (expires_at);
          INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('bench', 'public.refresh_tokens', 'revoked OR expires_at < now()', '@daily');"
    q -c "VACUUM ANALYZE public.refresh_tokens"
    q -c "CHECKPOINT"; q -c "SELECT pg_stat_reset()" ; q -c "SELECT pg_stat_reset_shared('bgwriter')"; q -c "SELECT pg_stat_reset_shared('wal')"
    sleep 1
    before=$(snap)
    t0=$(date +%s.%N)
    if [ $side = delete ]; then q -c "DELETE FROM public.refresh_tokens WHERE revoked OR expires_at < now()"; else q -c "SELECT rows_deleted, batches FROM token_cleanup.run('bench')" >/dev/null; fi
    t1=$(date +%s.%N)
    sleep 1
    after=$(snap)
    extra=""
    [ $side = run ] && extra=$(q -c "SELECT batches||' batches, longest '||longest_batch_ms||' ms, method '||method FROM token_cleanup.runs ORDER BY id DESC LIMIT 1")
    python3 - "$rows" "$side" "$t0" "$t1" "$before" "$after" "$extra" <<'PY'
import sys
rows, side, t0, t1, b, a, extra = sys.argv[1:8]
names = "wal_records wal_fpi wal_bytes checkpoints buffers_backend buffers_clean buffers_checkpoint heap_read heap_hit idx_read idx_hit".split()
b = [float(x) for x in b.split()]; a = [float(x) for x in a.split()]
d = {n: a[i] - b[i] for i, n in enumerate(names)}
print(f"{int(rows):>9} {side:>6} {float(t1)-float(t0):7.2f}s " + " ".join(f"{n}={int(v)}" for n, v in d.items()) + (" | " + extra if extra else ""), flush=True)
PY
  done
done
