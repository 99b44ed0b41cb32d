-- pg_token_cleanup 0.1.0 -> 0.2.0, run by ALTER EXTENSION pg_token_cleanup UPDATE.
-- Written by hand (see CONTRIBUTING.md): every change 0.2.0 made to the SQL objects of 0.1.0
-- (sql/pg_token_cleanup--0.1.0.sql), keeping the rules, their owners, the run history, and the
-- statistics. tests/upgrade.rs checks the result against a fresh 0.2.0 install.

\echo Use "ALTER EXTENSION pg_token_cleanup UPDATE" to load this file. \quit

-- Rules: per-rule run limit, time zone, archive, blast-radius limits, whole-partition handling,
-- pacing by replica lag, WAL rate and waiting sessions.
ALTER TABLE token_cleanup.rules
    ADD COLUMN max_run_duration  interval,
    ADD COLUMN timezone          text,
    ADD COLUMN archive_table     text,
    ADD COLUMN max_rows_per_run  bigint,
    ADD COLUMN max_fraction      real,
    ADD COLUMN drop_partitions   text NOT NULL DEFAULT 'never',
    ADD COLUMN max_replica_lag   interval,
    ADD COLUMN max_wal_rate      real,
    ADD COLUMN yield_to_waiters  boolean;

-- Runs: retries, stopped and refused runs; the error's SQLSTATE, detail and hint; partitions; how late
-- a run started; time paused by pacing.
ALTER TABLE token_cleanup.runs
    DROP CONSTRAINT runs_trigger_check,
    ADD CONSTRAINT runs_trigger_check CHECK (trigger IN ('schedule', 'manual', 'retry')),
    DROP CONSTRAINT runs_status_check,
    ADD CONSTRAINT runs_status_check
        CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted', 'stopped', 'refused')),
    ADD COLUMN sqlstate      text,
    ADD COLUMN error_detail  text,
    ADD COLUMN error_hint    text,
    ADD COLUMN partitions    jsonb,
    ADD COLUMN partitions_dropped integer NOT NULL DEFAULT 0,
    ADD COLUMN start_delay   interval GENERATED ALWAYS AS (started_at - scheduled_for) STORED,
    ADD COLUMN paused        interval NOT NULL DEFAULT '0',
    ADD COLUMN pause_reasons jsonb;

-- Lifetime counters per rule, started from the history kept (0.1.0's statistics were computed from
-- it, so rule_stats shows the same figures after the upgrade).
CREATE TABLE token_cleanup.rule_totals (
    rule_id          bigint      PRIMARY KEY,
    rule_name        text        NOT NULL,
    owner            name        NOT NULL,
    runs             bigint      NOT NULL DEFAULT 0,
    succeeded        bigint      NOT NULL DEFAULT 0,
    failed           bigint      NOT NULL DEFAULT 0,
    interrupted      bigint      NOT NULL DEFAULT 0,
    stopped          bigint      NOT NULL DEFAULT 0,
    refused          bigint      NOT NULL DEFAULT 0,
    rows_deleted     bigint      NOT NULL DEFAULT 0,
    run_time         interval    NOT NULL DEFAULT '0',
    longest_run      interval,
    longest_batch_ms integer,
    last_success_at  timestamptz,
    last_failure_at  timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0
);
COMMENT ON TABLE token_cleanup.rule_totals IS 'Lifetime counters per rule; never pruned';

INSERT INTO token_cleanup.rule_totals
       (rule_id, rule_name, owner, runs, succeeded, failed, interrupted, stopped, refused, rows_deleted,
        run_time, longest_run, longest_batch_ms, last_success_at, last_failure_at, consecutive_failures)
SELECT h.rule_id,
       (array_agg(h.rule_name ORDER BY h.started_at DESC))[1],
       (array_agg(h.owner ORDER BY h.started_at DESC))[1],
       count(*),
       count(*) FILTER (WHERE h.status = 'succeeded'),
       count(*) FILTER (WHERE h.status = 'failed'),
       count(*) FILTER (WHERE h.status = 'interrupted'),
       0,
       0,
       coalesce(sum(h.rows_deleted), 0),
       coalesce(sum(h.finished_at - h.started_at), '0'),
       max(h.finished_at - h.started_at),
       max(h.longest_batch_ms),
       max(h.finished_at) FILTER (WHERE h.status = 'succeeded'),
       max(h.finished_at) FILTER (WHERE h.status = 'failed'),
       -- failed runs since the last success
       count(*) FILTER (WHERE h.status = 'failed'
                          AND h.started_at > coalesce((SELECT max(s.started_at) FROM token_cleanup.runs s
                                                        WHERE s.rule_id = h.rule_id AND s.status = 'succeeded'),
                                                      '-infinity'))
  FROM token_cleanup.runs h
 WHERE h.status <> 'running'
 GROUP BY h.rule_id;

ALTER TABLE token_cleanup.rule_totals ENABLE ROW LEVEL SECURITY;
CREATE POLICY rule_totals_owner ON token_cleanup.rule_totals FOR SELECT USING (owner = current_user);
GRANT SELECT ON token_cleanup.rule_totals TO PUBLIC;

-- The rules' triggers: every name in the validation body schema-qualified (it runs with the
-- caller's search_path); the wake-up SECURITY DEFINER, so wake_scheduler() can be revoked.
CREATE OR REPLACE FUNCTION token_cleanup.rules_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    canonical pg_catalog.text[];
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        NEW.owner := coalesce(NEW.owner, current_user);
        NEW.created_at := pg_catalog.now();
    ELSE
        NEW.id := OLD.id;
        NEW.created_at := OLD.created_at;
    END IF;
    NEW.updated_at := pg_catalog.now();
    canonical := token_cleanup.check_rule(
        NEW.name, NEW.table_name, NEW.condition, NEW.schedule, NEW.batch_size,
        NEW.owner::pg_catalog.text,
        pg_catalog.date_part('epoch', NEW.lock_timeout),
        pg_catalog.date_part('epoch', NEW.statement_timeout),
        NEW.max_rows_per_second,
        pg_catalog.date_part('epoch', NEW.max_run_duration),
        NEW.timezone, NEW.archive_table, NEW.max_rows_per_run, NEW.max_fraction, NEW.drop_partitions);
    NEW.table_name := canonical[1];
    NEW.archive_table := canonical[2];
    IF NEW.max_replica_lag OPERATOR(pg_catalog.<) '0'::pg_catalog.interval THEN
        RAISE EXCEPTION 'max_replica_lag of rule "%" must not be negative, got %', NEW.name, NEW.max_replica_lag
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give the replica lag at which runs pause between batches, e.g. ''1 second'', 0 for off, or NULL for pg_token_cleanup.max_replica_lag.';
    END IF;
    IF NEW.max_wal_rate OPERATOR(pg_catalog.<) 0::pg_catalog.float4
       OR NEW.max_wal_rate OPERATOR(pg_catalog.=) 'NaN'::pg_catalog.float4 THEN
        RAISE EXCEPTION 'max_wal_rate % of rule "%" is not a rate', NEW.max_wal_rate, NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'Give the MB of WAL per second a run may write, e.g. 16, 0 for no limit, or NULL for pg_token_cleanup.max_wal_rate.';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION token_cleanup.rules_after_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM token_cleanup.wake_scheduler();
    RETURN NULL;
END
$$;

-- Functions. 0.1.0's ran with search_path = token_cleanup, pg_catalog, pg_temp; all now run with
-- pg_catalog, pg_temp. A changed signature or result is dropped and created again; the rest replaced.
DROP VIEW token_cleanup.rule_stats;          -- depends on next_run(text); created again below
DROP FUNCTION token_cleanup.next_run(text);
DROP FUNCTION token_cleanup.check_rule(text, text, text, text, integer, text, double precision, double precision, integer);

CREATE FUNCTION token_cleanup."check_rule"(
	"name" TEXT, /* Option < & str > */
	"table_name" TEXT, /* Option < & str > */
	"condition" TEXT, /* Option < & str > */
	"schedule" TEXT, /* Option < & str > */
	"batch_size" INT, /* Option < i32 > */
	"owner" TEXT, /* Option < & str > */
	"lock_timeout_s" double precision, /* Option < f64 > */
	"statement_timeout_s" double precision, /* Option < f64 > */
	"max_rows_per_second" INT, /* Option < i32 > */
	"max_run_duration_s" double precision, /* Option < f64 > */
	"timezone" TEXT, /* Option < & str > */
	"archive_table" TEXT, /* Option < & str > */
	"max_rows_per_run" bigint, /* Option < i64 > */
	"max_fraction" real, /* Option < f32 > */
	"drop_partitions" TEXT /* Option < & str > */
) RETURNS TEXT[] /* Vec < Option < String > > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_rule_wrapper';

CREATE FUNCTION token_cleanup."next_run"(
	"schedule" TEXT, /* & str */
	"timezone" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS timestamp with time zone /* Option < TimestampWithTimeZone > */
STABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'next_run_wrapper';

CREATE OR REPLACE FUNCTION token_cleanup."next_runs"(
	"schedule" TEXT, /* & str */
	"after" timestamp with time zone DEFAULT now(), /* TimestampWithTimeZone */
	"n" INT DEFAULT 5 /* i32 */
) RETURNS SETOF timestamp with time zone /* TimestampWithTimeZone */
STRICT STABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'next_runs_wrapper';

CREATE OR REPLACE FUNCTION token_cleanup."preview"(
	"rule_name" TEXT /* & str */
) RETURNS TABLE (
	"rule" TEXT,  /* String */
	"table_name" TEXT,  /* String */
	"condition" TEXT,  /* String */
	"matching_rows" bigint,  /* i64 */
	"batch_size" INT,  /* i32 */
	"batches" bigint  /* i64 */
)
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'preview_wrapper';

CREATE OR REPLACE FUNCTION token_cleanup."run"(
	"rule_name" TEXT /* & str */
) RETURNS TABLE (
	"run_id" bigint,  /* i64 */
	"rule" TEXT,  /* String */
	"status" TEXT,  /* String */
	"rows_deleted" bigint,  /* i64 */
	"batches" INT,  /* i32 */
	"started_at" timestamp with time zone,  /* TimestampWithTimeZone */
	"finished_at" timestamp with time zone  /* Option < TimestampWithTimeZone > */
)
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'run_wrapper';

CREATE OR REPLACE FUNCTION token_cleanup."wake_scheduler"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'wake_scheduler_wrapper';

CREATE OR REPLACE FUNCTION token_cleanup."wake_launcher"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'wake_launcher_wrapper';

CREATE FUNCTION token_cleanup."backlog_estimate"(
	"rule_name" TEXT /* & str */
) RETURNS bigint /* Option < i64 > */
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'backlog_estimate_wrapper';

CREATE FUNCTION token_cleanup."explain"(
	"rule_name" TEXT /* & str */
) RETURNS TABLE (
	"rule" TEXT,  /* String */
	"table_name" TEXT,  /* String */
	"method" TEXT,  /* String */
	"reason" TEXT,  /* String */
	"estimated_rows" bigint,  /* i64 */
	"live_rows" bigint,  /* i64 */
	"table_pages" bigint,  /* i64 */
	"pages_to_touch" bigint,  /* i64 */
	"expected_duration" interval,  /* Option < pgrx :: datum :: Interval > */
	"index_advice" TEXT  /* Option < String > */
)
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'explain_wrapper';

-- Internal: only CREATE EXTENSION wakes the launcher, and only the rules trigger wakes the scheduler.
REVOKE EXECUTE ON FUNCTION token_cleanup.wake_launcher() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION token_cleanup.wake_scheduler() FROM PUBLIC;

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

-- One row per run going on: what it has done so far (updated after every batch).
CREATE VIEW token_cleanup.progress AS
SELECT h.rule_name AS rule,
       h.id        AS run_id,
       h.pid,
       h.trigger,
       h.started_at,
       h.batches,
       h.rows_deleted,
       round((h.rows_deleted / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - h.started_at), 0.001))::numeric, 1)
                   AS rows_per_second
  FROM token_cleanup.runs h
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

-- The scheduler ran nothing in this database while it was at 0.1.0: it loads the rules now.
SELECT token_cleanup.wake_scheduler();
