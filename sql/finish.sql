-- Runs last in CREATE EXTENSION, after the Rust functions exist: the statistics view, and the wake-up
-- that makes the launcher start this database's scheduler at commit, without a restart.

-- Per rule: last run, its status, next fire time, and lifetime totals (token_cleanup.rule_totals,
-- which pruning the history never shrinks).
--
-- Who sees which rows: every view here filters on the row's owner the way the tables' row-level
-- security policies do (own rows; superusers and BYPASSRLS roles see all). On PostgreSQL 15 and later
-- the views are also security_invoker (set at the end of this file), so the policies apply to the
-- caller as well; PostgreSQL 14 has no security_invoker and a view reads its tables as the view's
-- owner, which bypasses the policies, so there the filters are what keeps one role's rules from
-- another.
CREATE VIEW token_cleanup.rule_stats AS
SELECT r.id                    AS rule_id,
       r.name                  AS rule,
       r.table_name,
       r.schedule,
       r.enabled,
       r.owner,
       last.started_at         AS last_run_at,
       last.status             AS last_status,
       last.rows_deleted       AS last_rows_deleted,
       last.finished_at - last.started_at AS last_duration,
       last.error              AS last_error,
       CASE WHEN r.enabled AND pg_catalog.current_setting('pg_token_cleanup.enabled')::boolean
            THEN token_cleanup.next_run(r.schedule, r.timezone) END AS next_run_at,
       coalesce(t.runs, 0)               AS runs,
       coalesce(t.succeeded, 0)          AS succeeded,
       coalesce(t.failed, 0)             AS failed,
       coalesce(t.interrupted, 0)        AS interrupted,
       coalesce(t.stopped, 0)            AS stopped,
       coalesce(t.refused, 0)            AS refused,
       coalesce(t.consecutive_failures, 0) AS consecutive_failures,
       coalesce(t.rows_deleted, 0)       AS total_rows_deleted,
       t.run_time / nullif(t.runs, 0)    AS avg_duration,
       t.longest_run                     AS max_duration,
       t.longest_batch_ms,
       t.last_success_at,
       t.last_failure_at
  FROM token_cleanup.rules r
  LEFT JOIN token_cleanup.rule_totals t ON t.rule_id = r.id
  LEFT JOIN LATERAL (
        SELECT h.started_at, h.finished_at, h.status, h.rows_deleted, h.error
          FROM token_cleanup.runs h
         WHERE h.rule_id = r.id
         ORDER BY h.started_at DESC
         LIMIT 1) last ON true
 WHERE (r.owner = CURRENT_USER OR (SELECT a.rolsuper OR a.rolbypassrls FROM pg_catalog.pg_roles a WHERE a.rolname = CURRENT_USER));

GRANT SELECT ON token_cleanup.rule_stats TO PUBLIC;

-- One row per run going on: what it has done so far (after every batch: the run's row gets its
-- progress every few seconds, shared memory after every batch).
CREATE VIEW token_cleanup.progress AS
SELECT h.rule_name AS rule,
       h.id        AS run_id,
       h.pid,
       h.trigger,
       h.started_at,
       greatest(h.batches, l.batches) AS batches,
       greatest(h.rows_deleted, l.rows_deleted) AS rows_deleted,
       round((greatest(h.rows_deleted, l.rows_deleted)
              / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - h.started_at), 0.001))::numeric, 1)
                   AS rows_per_second
  FROM token_cleanup.runs h
  LEFT JOIN token_cleanup.live_progress() l ON l.run_id = h.id
 WHERE h.status = 'running'
   AND (h.owner = CURRENT_USER OR (SELECT a.rolsuper OR a.rolbypassrls FROM pg_catalog.pg_roles a WHERE a.rolname = CURRENT_USER));

GRANT SELECT ON token_cleanup.progress TO PUBLIC;

-- Metrics in the shape postgres_exporter's custom queries and similar collectors read as they
-- are: a name, labels, a value (see docs/monitoring.md).
CREATE VIEW token_cleanup.metrics AS
WITH sees_all AS (SELECT a.rolsuper OR a.rolbypassrls AS yes FROM pg_catalog.pg_roles a WHERE a.rolname = CURRENT_USER),
     visible_totals AS (SELECT * FROM token_cleanup.rule_totals t WHERE t.owner = CURRENT_USER OR (SELECT yes FROM sees_all)),
     visible_rules AS (SELECT * FROM token_cleanup.rules r WHERE r.owner = CURRENT_USER OR (SELECT yes FROM sees_all)),
     visible_running AS (SELECT * FROM token_cleanup.runs h WHERE h.status = 'running'
                    AND (h.owner = CURRENT_USER OR (SELECT yes FROM sees_all)))
SELECT 'pg_token_cleanup_runs_total'::text AS metric,
       pg_catalog.jsonb_build_object('rule', t.rule_name, 'owner', t.owner, 'status', s.status) AS labels,
       s.value::float8 AS value
  FROM visible_totals t
 CROSS JOIN LATERAL (VALUES ('succeeded', t.succeeded), ('failed', t.failed),
                            ('interrupted', t.interrupted), ('stopped', t.stopped),
                            ('refused', t.refused)) AS s(status, value)
UNION ALL
SELECT 'pg_token_cleanup_rows_deleted_total',
       pg_catalog.jsonb_build_object('rule', t.rule_name, 'owner', t.owner), t.rows_deleted::float8
  FROM visible_totals t
UNION ALL
SELECT 'pg_token_cleanup_run_seconds_total',
       pg_catalog.jsonb_build_object('rule', t.rule_name, 'owner', t.owner),
       extract(epoch FROM t.run_time)::float8
  FROM visible_totals t
UNION ALL
SELECT 'pg_token_cleanup_consecutive_failures',
       pg_catalog.jsonb_build_object('rule', t.rule_name, 'owner', t.owner), t.consecutive_failures::float8
  FROM visible_totals t
UNION ALL
SELECT 'pg_token_cleanup_last_success_age_seconds',
       pg_catalog.jsonb_build_object('rule', t.rule_name, 'owner', t.owner),
       extract(epoch FROM pg_catalog.now() - t.last_success_at)::float8
  FROM visible_totals t WHERE t.last_success_at IS NOT NULL
UNION ALL
SELECT 'pg_token_cleanup_last_run_age_seconds',
       pg_catalog.jsonb_build_object('rule', r.rule, 'owner', r.owner),
       extract(epoch FROM pg_catalog.now() - r.last_run_at)::float8
  FROM token_cleanup.rule_stats r WHERE r.last_run_at IS NOT NULL
UNION ALL
SELECT 'pg_token_cleanup_backlog_rows',
       pg_catalog.jsonb_build_object('rule', r.name, 'owner', r.owner),
       token_cleanup.backlog_estimate(r.name)::float8
  FROM visible_rules r WHERE r.enabled
UNION ALL
SELECT 'pg_token_cleanup_running_runs', '{}'::jsonb, count(*)::float8
  FROM visible_running h;

GRANT SELECT ON token_cleanup.metrics TO PUBLIC;

-- Internal: only CREATE EXTENSION wakes the launcher (anyone could otherwise make it probe every
-- database over and over), and only the rules trigger wakes the scheduler.
REVOKE EXECUTE ON FUNCTION token_cleanup.wake_launcher() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION token_cleanup.wake_scheduler() FROM PUBLIC;

-- Rules on sharded Citus tables: the coordinator's runner CALLs this on the node that holds a
-- shard, as the role the rule runs as (src/executor/shards.rs). It deletes the shard's matching
-- rows (moving them into the co-located shard `archive`, when not NULL) batch after batch, each batch committed on its own (token_cleanup.shard_batch() does one),
-- until the shard is done or max_ms have passed (0: one batch), and says where it stopped and how
-- long its longest batch took (its statement, without the commit). One
-- connection serves many batches: opening one costs more than a batch. No SET clause: a procedure
-- that commits may not have one; every name here is qualified.
CREATE PROCEDURE token_cleanup.shard_purge(
    shard text, condition text, from_block bigint, from_offset integer, pages bigint,
    batch_limit integer, lock_timeout_ms integer, statement_timeout_ms integer, max_ms integer,
    archive text, INOUT result text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz := pg_catalog.clock_timestamp();
    reply jsonb;
    deleted bigint := 0;
    batches integer := 0;
    redone integer := 0;
    longest float8 := 0;
BEGIN
    LOOP
        reply := token_cleanup.shard_batch(shard, condition, from_block, from_offset, pages,
            batch_limit, lock_timeout_ms, statement_timeout_ms, archive)::jsonb;
        COMMIT;
        deleted := deleted + (reply OPERATOR(pg_catalog.->>) 'rows')::bigint;
        batches := batches + 1;
        longest := GREATEST(longest, (reply OPERATOR(pg_catalog.->>) 'ms')::float8);
        IF (reply OPERATOR(pg_catalog.->>) 'redone')::boolean THEN
            redone := redone + 1;
        END IF;
        pages := (reply OPERATOR(pg_catalog.->>) 'pages')::bigint;
        IF pg_catalog.jsonb_typeof(reply OPERATOR(pg_catalog.->) 'next') IS DISTINCT FROM 'array' THEN
            from_block := NULL;
            EXIT;
        END IF;
        from_block := (reply OPERATOR(pg_catalog.->) 'next' OPERATOR(pg_catalog.->>) 0)::bigint;
        from_offset := (reply OPERATOR(pg_catalog.->) 'next' OPERATOR(pg_catalog.->>) 1)::integer;
        EXIT WHEN pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) started
            OPERATOR(pg_catalog.>=) pg_catalog.make_interval(secs => max_ms / 1000.0);
    END LOOP;
    result := pg_catalog.jsonb_build_object('rows', deleted, 'batches', batches, 'redone', redone,
        'longest_ms', longest, 'pages', pages, 'next', CASE WHEN from_block IS NULL THEN NULL
                                     ELSE pg_catalog.jsonb_build_array(from_block, from_offset) END)::text;
END
$$;

-- PostgreSQL 15 and later: the views run as their caller (see rule_stats above).
DO $$
BEGIN
    IF pg_catalog.current_setting('server_version_num')::int >= 150000 THEN
        ALTER VIEW token_cleanup.rule_stats SET (security_invoker = true);
        ALTER VIEW token_cleanup.progress SET (security_invoker = true);
        ALTER VIEW token_cleanup.metrics SET (security_invoker = true);
    END IF;
END
$$;

-- Every version: the views are security barriers, so a caller's cheap leaky function in a query
-- over them sees only the rows their own WHERE clause lets through (PostgreSQL 14 has no
-- security_invoker, and the views filter by owner themselves there). Set after security_invoker,
-- as the upgrade from 0.3.0 does: pg_dump shows the options in the order they were set.
ALTER VIEW token_cleanup.rule_stats SET (security_barrier = true);
ALTER VIEW token_cleanup.progress SET (security_barrier = true);
ALTER VIEW token_cleanup.metrics SET (security_barrier = true);

SELECT token_cleanup.wake_launcher();
