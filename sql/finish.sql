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
     -- Columns named, not *: a view expands * when it is created, so an upgrade that adds a column
     -- would leave it unlike a fresh install's.
     visible_totals AS (SELECT t.rule_name, t.owner, t.succeeded, t.failed, t.interrupted, t.stopped,
                               t.refused, t.rows_deleted, t.run_time, t.consecutive_failures, t.last_success_at
                          FROM token_cleanup.rule_totals t WHERE t.owner = CURRENT_USER OR (SELECT yes FROM sees_all)),
     visible_rules AS (SELECT r.name, r.owner, r.enabled
                         FROM token_cleanup.rules r WHERE r.owner = CURRENT_USER OR (SELECT yes FROM sees_all)),
     visible_running AS (SELECT h.id FROM token_cleanup.runs h WHERE h.status = 'running'
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

-- Metrics for Prometheus, one row per series: the metric's name, its labels (rule, table, owner;
-- status for runs, reason for pauses; '' where a label does not apply, which Prometheus reads as
-- absent) and its value. Names and types follow Prometheus's conventions: counters end in _total,
-- timestamps in _timestamp_seconds. Cheap to read with thousands of rules: no rule's condition is
-- planned (the backlog is what its last run found, see rule_totals.backlog_rows), one index probe per rule
-- for its last run. docs/monitoring/ has the exporter's configuration that serves it.
CREATE VIEW token_cleanup.prometheus AS
WITH rule_series AS (
    SELECT r.name AS rule, r.table_name AS "table", r.owner::text AS owner, r.enabled,
           t.succeeded, t.failed, t.interrupted, t.stopped, t.refused, t.rows_deleted, t.batches,
           t.run_time, t.pause_seconds, t.consecutive_failures, t.backlog_rows, t.last_success_at,
           last.duration, last.start_delay,
           CASE WHEN r.enabled THEN (SELECT extract(epoch FROM max(f) - min(f))
                                       FROM token_cleanup.next_runs(r.schedule, now(), 2) f) END AS interval_seconds
      FROM token_cleanup.rules r
      LEFT JOIN token_cleanup.rule_totals t ON t.rule_id = r.id
      LEFT JOIN LATERAL (
            SELECT h.finished_at - h.started_at AS duration, h.start_delay
              FROM token_cleanup.runs h
             WHERE h.rule_id = r.id AND h.status <> 'running'
             ORDER BY h.started_at DESC
             LIMIT 1) last ON true
     WHERE (r.owner = CURRENT_USER OR (SELECT a.rolsuper OR a.rolbypassrls FROM pg_catalog.pg_roles a WHERE a.rolname = CURRENT_USER)))
SELECT v.metric, s.rule, s."table", s.owner, v.status, v.reason, v.value
  FROM rule_series s
 CROSS JOIN LATERAL (VALUES
        ('pg_token_cleanup_runs_total', 'succeeded', '', coalesce(s.succeeded, 0)::float8),
        ('pg_token_cleanup_runs_total', 'failed', '', coalesce(s.failed, 0)::float8),
        ('pg_token_cleanup_runs_total', 'interrupted', '', coalesce(s.interrupted, 0)::float8),
        ('pg_token_cleanup_runs_total', 'stopped', '', coalesce(s.stopped, 0)::float8),
        ('pg_token_cleanup_runs_total', 'refused', '', coalesce(s.refused, 0)::float8),
        ('pg_token_cleanup_rows_deleted_total', '', '', coalesce(s.rows_deleted, 0)::float8),
        ('pg_token_cleanup_batches_total', '', '', coalesce(s.batches, 0)::float8),
        ('pg_token_cleanup_run_seconds_total', '', '', coalesce(extract(epoch FROM s.run_time), 0)::float8),
        ('pg_token_cleanup_paused_seconds_total', '', 'replica_lag', coalesce((s.pause_seconds ->> 'replica_lag')::float8, 0)),
        ('pg_token_cleanup_paused_seconds_total', '', 'wal_rate', coalesce((s.pause_seconds ->> 'wal_rate')::float8, 0)),
        ('pg_token_cleanup_paused_seconds_total', '', 'waiters', coalesce((s.pause_seconds ->> 'waiters')::float8, 0)),
        ('pg_token_cleanup_consecutive_failures', '', '', coalesce(s.consecutive_failures, 0)::float8),
        ('pg_token_cleanup_enabled', '', '', s.enabled::int::float8),
        ('pg_token_cleanup_backlog_rows', '', '', s.backlog_rows::float8),
        ('pg_token_cleanup_last_success_timestamp_seconds', '', '', extract(epoch FROM s.last_success_at)::float8),
        ('pg_token_cleanup_last_run_duration_seconds', '', '', extract(epoch FROM s.duration)::float8),
        ('pg_token_cleanup_last_start_delay_seconds', '', '', extract(epoch FROM s.start_delay)::float8),
        ('pg_token_cleanup_schedule_interval_seconds', '', '', s.interval_seconds::float8)
     ) AS v(metric, status, reason, value)
 WHERE v.value IS NOT NULL
UNION ALL
SELECT v.metric, '', '', '', '', '', v.value
  FROM token_cleanup.worker_budget() b
 CROSS JOIN LATERAL (VALUES
        ('pg_token_cleanup_runs_in_progress',
         (SELECT count(*) FROM token_cleanup.runs h WHERE h.status = 'running'
             AND (h.owner = CURRENT_USER OR (SELECT a.rolsuper OR a.rolbypassrls FROM pg_catalog.pg_roles a WHERE a.rolname = CURRENT_USER)))::float8),
        ('pg_token_cleanup_workers_in_use', b.in_use::float8),
        ('pg_token_cleanup_workers_budget', b.budget::float8),
        ('pg_token_cleanup_workers_waiting', b.waiting::float8)
     ) AS v(metric, value);

GRANT SELECT ON token_cleanup.prometheus TO PUBLIC;

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
        ALTER VIEW token_cleanup.errors SET (security_invoker = true);
        ALTER VIEW token_cleanup.prometheus SET (security_invoker = true);
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
ALTER VIEW token_cleanup.errors SET (security_barrier = true);
ALTER VIEW token_cleanup.prometheus SET (security_barrier = true);

-- What \d+ and \df+ say of the views, functions and procedures (the tables and the errors view:
-- schema.sql).
COMMENT ON VIEW token_cleanup.rule_stats IS 'Per rule: its last run, next fire time and lifetime totals';
COMMENT ON COLUMN token_cleanup.rule_stats.rule_id IS 'The rule''s id';
COMMENT ON COLUMN token_cleanup.rule_stats.rule IS 'The rule''s name';
COMMENT ON COLUMN token_cleanup.rule_stats.table_name IS 'The table it deletes from';
COMMENT ON COLUMN token_cleanup.rule_stats.schedule IS 'Its schedule';
COMMENT ON COLUMN token_cleanup.rule_stats.enabled IS 'Whether it is scheduled';
COMMENT ON COLUMN token_cleanup.rule_stats.owner IS 'The role it runs as';
COMMENT ON COLUMN token_cleanup.rule_stats.last_run_at IS 'When its last run started';
COMMENT ON COLUMN token_cleanup.rule_stats.last_status IS 'Its last run''s status';
COMMENT ON COLUMN token_cleanup.rule_stats.last_rows_deleted IS 'Rows its last run deleted';
COMMENT ON COLUMN token_cleanup.rule_stats.last_duration IS 'How long its last run took';
COMMENT ON COLUMN token_cleanup.rule_stats.last_error IS 'Its last run''s error, if any';
COMMENT ON COLUMN token_cleanup.rule_stats.next_run_at IS 'Its next fire time; NULL when disabled or the extension is off';
COMMENT ON COLUMN token_cleanup.rule_stats.runs IS 'Runs ended, lifetime';
COMMENT ON COLUMN token_cleanup.rule_stats.succeeded IS 'Runs that succeeded, lifetime';
COMMENT ON COLUMN token_cleanup.rule_stats.failed IS 'Runs that failed, lifetime';
COMMENT ON COLUMN token_cleanup.rule_stats.interrupted IS 'Runs interrupted, lifetime';
COMMENT ON COLUMN token_cleanup.rule_stats.stopped IS 'Runs stopped, lifetime';
COMMENT ON COLUMN token_cleanup.rule_stats.refused IS 'Runs refused, lifetime';
COMMENT ON COLUMN token_cleanup.rule_stats.consecutive_failures IS 'Failed runs since the last success';
COMMENT ON COLUMN token_cleanup.rule_stats.total_rows_deleted IS 'Rows deleted, lifetime';
COMMENT ON COLUMN token_cleanup.rule_stats.avg_duration IS 'Mean run time';
COMMENT ON COLUMN token_cleanup.rule_stats.max_duration IS 'Longest run';
COMMENT ON COLUMN token_cleanup.rule_stats.longest_batch_ms IS 'Longest batch, in milliseconds';
COMMENT ON COLUMN token_cleanup.rule_stats.last_success_at IS 'When the last successful run ended';
COMMENT ON COLUMN token_cleanup.rule_stats.last_failure_at IS 'When the last failed run ended';

COMMENT ON VIEW token_cleanup.progress IS 'One row per run going on, with what it has done so far';
COMMENT ON COLUMN token_cleanup.progress.rule IS 'The rule''s name';
COMMENT ON COLUMN token_cleanup.progress.run_id IS 'The run''s id';
COMMENT ON COLUMN token_cleanup.progress.pid IS 'Process id of the worker running it';
COMMENT ON COLUMN token_cleanup.progress.trigger IS 'schedule | manual | retry';
COMMENT ON COLUMN token_cleanup.progress.started_at IS 'When the run started';
COMMENT ON COLUMN token_cleanup.progress.batches IS 'Batches committed so far';
COMMENT ON COLUMN token_cleanup.progress.rows_deleted IS 'Rows deleted so far';
COMMENT ON COLUMN token_cleanup.progress.rows_per_second IS 'Rows deleted per second since the run started';

COMMENT ON VIEW token_cleanup.metrics IS 'Metrics as name, labels, value, for postgres_exporter-style collectors';
COMMENT ON COLUMN token_cleanup.metrics.metric IS 'Metric name';
COMMENT ON COLUMN token_cleanup.metrics.labels IS 'Labels as a JSON object: rule, owner, status';
COMMENT ON COLUMN token_cleanup.metrics.value IS 'The value';

COMMENT ON VIEW token_cleanup.prometheus IS 'Metrics for Prometheus, one row per series: name, labels (rule, table, owner, status, reason), value';
COMMENT ON COLUMN token_cleanup.prometheus.metric IS 'Metric name (counters end in _total)';
COMMENT ON COLUMN token_cleanup.prometheus.rule IS 'Label rule: the rule''s name (empty for server-wide series)';
COMMENT ON COLUMN token_cleanup.prometheus."table" IS 'Label table: the table the rule deletes from';
COMMENT ON COLUMN token_cleanup.prometheus.owner IS 'Label owner: the role the rule runs as';
COMMENT ON COLUMN token_cleanup.prometheus.status IS 'Label status of pg_token_cleanup_runs_total';
COMMENT ON COLUMN token_cleanup.prometheus.reason IS 'Label reason of pg_token_cleanup_paused_seconds_total';
COMMENT ON COLUMN token_cleanup.prometheus.value IS 'The value';
COMMENT ON FUNCTION token_cleanup.worker_budget IS 'Worker slots held now in the cluster, pg_token_cleanup.max_workers, and how many wait for a slot';
COMMENT ON FUNCTION token_cleanup.add_rule IS 'Creates a rule (every rules column a named parameter) and returns its id; if_not_exists leaves an existing one as it is';
COMMENT ON FUNCTION token_cleanup.alter_rule IS 'Changes the named parameters of a rule; new_name renames it, clear lists columns set back to their defaults';
COMMENT ON FUNCTION token_cleanup.remove_rule IS 'Deletes a rule (its history stays); if_exists makes a missing rule a notice';
COMMENT ON FUNCTION token_cleanup.expire IS 'A rule deleting rows whose timestamp, date or epoch column is more than `after` in the past';
COMMENT ON FUNCTION token_cleanup.apply_rules IS 'Makes the caller''s rules match a JSON array of declared rules (prune: remove the others); one row per rule';
COMMENT ON FUNCTION token_cleanup.export_rules IS 'The caller''s rules as a JSON array that apply_rules() takes';
COMMENT ON FUNCTION token_cleanup.rule_defaults IS 'The columns a rule sets, each with its default, as JSON (used by apply_rules)';
COMMENT ON FUNCTION token_cleanup.rule_declared IS 'A declared rule made whole: every column as declared or its default (used by apply_rules)';
COMMENT ON FUNCTION token_cleanup.rule_differences IS 'The columns in which a declared rule differs from a stored one (used by apply_rules)';
COMMENT ON FUNCTION token_cleanup.rule_write IS 'Inserts a declared rule, or updates the columns given (used by apply_rules)';
COMMENT ON FUNCTION token_cleanup.delete_rule IS 'Deletes a rule its caller owns (its history stays)';
COMMENT ON FUNCTION token_cleanup.run IS 'Runs a rule now, waits for it, and returns the run; raises the run''s error if it failed';
COMMENT ON FUNCTION token_cleanup.preview IS 'Counts the rows a rule would delete now, and in how many batches';
COMMENT ON FUNCTION token_cleanup.explain IS 'How a run of a rule would find its rows (table walk, index, per shard), with estimates and index advice';
COMMENT ON FUNCTION token_cleanup.backlog_estimate IS 'The planner''s estimate of the rows a rule would delete now';
COMMENT ON FUNCTION token_cleanup.next_run IS 'The next fire time of a schedule after now';
COMMENT ON FUNCTION token_cleanup.next_runs IS 'The next n fire times of a schedule after a time';
COMMENT ON FUNCTION token_cleanup.live_progress IS 'Runs going on in this database, from shared memory (the progress view reads it)';
COMMENT ON FUNCTION token_cleanup.within_batch IS 'Internal: caps a batch at its row count; true while the batch may take more rows';
COMMENT ON FUNCTION token_cleanup.wake_launcher IS 'Internal: tells the launcher this database has the extension (CREATE EXTENSION)';
COMMENT ON FUNCTION token_cleanup.wake_scheduler IS 'Internal: tells this database''s scheduler the rules changed (rules trigger)';
COMMENT ON FUNCTION token_cleanup.rules_before_write IS 'Internal: the rules trigger that validates every written rule';
COMMENT ON FUNCTION token_cleanup.rules_after_change IS 'Internal: the rules trigger that wakes the scheduler at commit';
COMMENT ON FUNCTION token_cleanup.shard_plan IS 'Internal (Citus): plans a rule on the shards held by this node';
COMMENT ON FUNCTION token_cleanup.shard_batch IS 'Internal (Citus): one batch of a rule on a shard held by this node';
COMMENT ON PROCEDURE token_cleanup.shard_purge IS 'Internal (Citus): batches of a rule on a shard held by this node, each committed, for up to max_ms';

SELECT token_cleanup.wake_launcher();
