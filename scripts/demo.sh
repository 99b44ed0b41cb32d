#!/usr/bin/env bash
# The demo: installs what is missing, builds and installs pg_token_cleanup, starts a throwaway
# PostgreSQL 15 cluster (as the postgres OS user) with the library preloaded, creates token tables
# with expired and live rows, adds rules on a seconds-level schedule, and shows the worker purging
# them and the run statistics. Idempotent: a previous demo cluster is removed first.
# KEEP=1 leaves the cluster running at the end (port 54329).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/pg_env.sh
echo "==> cargo pgrx install"
cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null

DIR=/tmp/pg_token_cleanup_demo
PORT=54329
source scripts/cluster.sh
start_cluster "$DIR" "$PORT" "pg_token_cleanup.batch_size = 10000"
[ "${KEEP:-0}" = 1 ] || trap 'stop_cluster "$DIR"' EXIT
psql() { psql_at "$PORT" "$@"; }
psql -d postgres -c "CREATE DATABASE auth"

echo "==> token tables: refresh tokens, sessions, password resets, Ed-Fi client access tokens"
psql -d auth <<'SQL'
CREATE EXTENSION pg_token_cleanup;
CREATE TABLE public.refresh_tokens (
    id bigserial PRIMARY KEY, user_id bigint NOT NULL, token_hash bytea NOT NULL,
    revoked boolean NOT NULL DEFAULT false, expires_at timestamptz NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON public.refresh_tokens (expires_at);
INSERT INTO public.refresh_tokens (user_id, token_hash, revoked, expires_at)
SELECT g % 5000, sha256(g::text::bytea), g % 7 = 0,
       now() + CASE WHEN g % 2 = 0 THEN -interval '1 day' ELSE interval '30 days' END
  FROM generate_series(1, 200000) g;
CREATE TABLE public.sessions (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id bigint, last_seen timestamptz);
INSERT INTO public.sessions (user_id, last_seen)
SELECT g, now() - (g % 60) * interval '1 day' FROM generate_series(1, 50000) g;
CREATE TABLE public.password_resets (id serial PRIMARY KEY, email text, used boolean, expires_at timestamptz);
INSERT INTO public.password_resets (email, used, expires_at)
SELECT 'user' || g || '@example.com', g % 3 = 0, now() + (g % 4 - 2) * interval '1 hour' FROM generate_series(1, 20000) g;
CREATE SCHEMA dbo;
CREATE TABLE dbo."ClientAccessTokens" ("Id" uuid PRIMARY KEY DEFAULT gen_random_uuid(), "Expiration" timestamptz NOT NULL);
INSERT INTO dbo."ClientAccessTokens" ("Expiration")
SELECT now() + (g % 10 - 5) * interval '1 hour' FROM generate_series(1, 30000) g;
SQL

count_rows() {
    psql -d auth -At -F ' ' -c "SELECT
      (SELECT count(*) FROM public.refresh_tokens WHERE revoked OR expires_at < now()) || '/' || (SELECT count(*) FROM public.refresh_tokens),
      (SELECT count(*) FROM public.sessions WHERE last_seen < now() - interval '30 days') || '/' || (SELECT count(*) FROM public.sessions),
      (SELECT count(*) FROM public.password_resets WHERE used OR expires_at < now()) || '/' || (SELECT count(*) FROM public.password_resets),
      (SELECT count(*) FROM dbo.\"ClientAccessTokens\" WHERE \"Expiration\" < now()) || '/' || (SELECT count(*) FROM dbo.\"ClientAccessTokens\")"
}

echo "==> rules (seconds-level schedules so the demo is quick)"
psql -d auth <<'SQL'
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES
  ('refresh_tokens',  'refresh_tokens',           'revoked OR expires_at < now()',          '*/3 * * * * *'),
  ('sessions',        'public.sessions',          'last_seen < now() - interval ''30 days''', '*/4 * * * * *'),
  ('password_resets', 'password_resets',          'used OR expires_at < now()',             '*/5 * * * * *'),
  ('edfi_tokens',     'dbo."ClientAccessTokens"', '"Expiration" < now()',                   '0 0/30 * 1/1 * ? *');
SELECT name, table_name, schedule FROM token_cleanup.rules ORDER BY id;
SELECT * FROM token_cleanup.preview('edfi_tokens');
SELECT token_cleanup.next_runs('0 0/30 * 1/1 * ? *', now(), 3) AS "next runs of the Ed-Fi schedule";
SQL

echo "==> purgeable/total rows: refresh_tokens sessions password_resets ClientAccessTokens"
for i in $(seq 0 7); do
    echo "  t+${i}s  $(count_rows)"
    sleep 1
done

echo "==> the Ed-Fi rule fires every 30 minutes; run it now"
psql -d auth -c "SELECT run_id, rule, status, rows_deleted, batches FROM token_cleanup.run('edfi_tokens')"
echo "  now    $(count_rows)"

echo "==> token_cleanup.rule_stats"
psql -d auth -c "SELECT rule, last_status, last_rows_deleted, runs, total_rows_deleted, next_run_at FROM token_cleanup.rule_stats ORDER BY rule"
echo "==> token_cleanup.runs (latest)"
psql -d auth -c "SELECT id, rule_name, trigger, status, rows_deleted, batches, finished_at - started_at AS took FROM token_cleanup.runs ORDER BY id DESC LIMIT 8"
echo "==> the worker's LOG lines"
grep "pg_token_cleanup: rule" "$DIR/server.log" | head -6
if [ "${KEEP:-0}" = 1 ]; then
    echo "==> cluster left running: psql -h 127.0.0.1 -p $PORT -U postgres auth"
fi
