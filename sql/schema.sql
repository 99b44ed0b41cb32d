-- pg_token_cleanup schema: the rules catalog, run history, statistics view, row-level security,
-- and the triggers that validate rules and wake the scheduler. Loaded by extension_sql_file! in
-- src/lib.rs before the Rust functions it calls are created (they are resolved at run time).

-- The schema must be ours. CREATE EXTENSION installs into an existing token_cleanup schema, and
-- whoever owns a schema can drop and replace what is in it, or add functions and operators that
-- would be found first. So it is accepted only if this CREATE EXTENSION created it (its row was
-- written by this transaction), or if it is what an earlier DROP EXTENSION left behind: owned by a
-- superuser, holding nothing (but the extension being created), and with CREATE granted to no other
-- role.
-- Everything here is schema-qualified: this runs before anything else of ours exists.
DO $check_schema$
DECLARE
    foreign_owner pg_catalog.text;
BEGIN
    SELECT pg_catalog.pg_get_userbyid(n.nspowner) INTO foreign_owner
      FROM pg_catalog.pg_namespace n
     WHERE n.nspname OPERATOR(pg_catalog.=) 'token_cleanup'
       AND pg_catalog.age(n.xmin) OPERATOR(pg_catalog.>) 0
       AND NOT (
               (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) n.nspowner)
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                            WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
                              AND d.refobjid OPERATOR(pg_catalog.=) n.oid
                              -- the extension being created already depends on its schema
                              AND d.classid OPERATOR(pg_catalog.<>) 'pg_catalog.pg_extension'::pg_catalog.regclass)
           AND NOT EXISTS (SELECT FROM pg_catalog.aclexplode(n.nspacl) a
                            WHERE a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
                              AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner));
    IF FOUND THEN
        RAISE EXCEPTION 'schema "token_cleanup" already exists and was not created by pg_token_cleanup (owner: %)', foreign_owner
            USING ERRCODE = 'duplicate_schema',
                  HINT = 'pg_token_cleanup installs into a schema of its own. Move or drop what the existing token_cleanup schema holds, DROP SCHEMA token_cleanup, then CREATE EXTENSION pg_token_cleanup again.';
    END IF;
END
$check_schema$;

-- A rule: what to delete, from which table, on which schedule, as which role.
CREATE TABLE token_cleanup.rules (
    id                bigserial PRIMARY KEY,
    name              text        NOT NULL,
    table_name        text        NOT NULL,
    condition         text        NOT NULL,
    schedule          text        NOT NULL,
    batch_size        integer,                       -- NULL: pg_token_cleanup.batch_size
    enabled           boolean     NOT NULL DEFAULT true,
    owner             name        NOT NULL DEFAULT current_user,
    lock_timeout      interval,                      -- NULL: pg_token_cleanup.lock_timeout
    statement_timeout interval,                      -- NULL: pg_token_cleanup.statement_timeout
    max_rows_per_second integer,                     -- NULL: pg_token_cleanup.max_rows_per_second; 0: no limit
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- 0.2.0 (after the columns of 0.1.0, where ALTER TABLE … ADD COLUMN puts them on upgrade)
    max_run_duration  interval,                      -- NULL: no limit; a run stops between batches after it
    timezone          text,                          -- NULL: pg_token_cleanup.timezone
    archive_table     text,                          -- NULL: none; else rows are moved there
    max_rows_per_run  bigint,                        -- NULL: no limit; a run that would delete more is refused
    max_fraction      real,                          -- NULL: pg_token_cleanup.max_fraction (of live rows)
    drop_partitions   text        NOT NULL DEFAULT 'never', -- never | detach | drop: whole expired partitions
    -- pacing by the database's own signals; NULL: the setting of the same name; 0 or false: off
    max_replica_lag   interval,                      -- pause while a streaming replica is further behind
    max_wal_rate      real,                          -- MB/s of WAL over the last second
    yield_to_waiters  boolean,                       -- pause while sessions wait on the table
    -- 0.8.0
    parallel_workers  integer,                       -- NULL: pg_token_cleanup.parallel_workers; runners per run
    CONSTRAINT rules_name_key UNIQUE (name)
);
COMMENT ON TABLE token_cleanup.rules IS 'Cleanup rules: delete rows of table_name matching condition on schedule, as owner';

-- A run: one execution of a rule. Inserted as 'running' and committed before any row is deleted,
-- so a crash leaves evidence; kept without a foreign key so that history outlives its rule.
CREATE TABLE token_cleanup.runs (
    id            bigserial PRIMARY KEY,
    rule_id       bigint      NOT NULL,
    rule_name     text        NOT NULL,
    owner         name        NOT NULL,
    trigger       text        NOT NULL CHECK (trigger IN ('schedule', 'manual', 'retry')),
    status        text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted', 'stopped', 'refused')),
    scheduled_for timestamptz,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz,
    rows_deleted  bigint      NOT NULL DEFAULT 0,
    batches       integer     NOT NULL DEFAULT 0,
    longest_batch_ms integer,                        -- longest batch, start to commit
    method        text        CHECK (method IN ('table walk', 'index', 'per shard')), -- how rows were found
    error         text,
    pid           integer,
    -- 0.2.0 (after the columns of 0.1.0, where ALTER TABLE … ADD COLUMN puts them on upgrade)
    sqlstate      text,                              -- of the error
    error_detail  text,
    error_hint    text,
    partitions    jsonb,                             -- partitioned tables: rows and action per leaf
    partitions_dropped integer NOT NULL DEFAULT 0,   -- leaf partitions dropped or detached whole
    -- how late a scheduled run started (no free slot, a busy table, a late scheduler)
    start_delay   interval GENERATED ALWAYS AS (started_at - scheduled_for) STORED,
    paused        interval    NOT NULL DEFAULT '0',  -- time spent paused by pacing
    pause_reasons jsonb,                             -- seconds paused per reason: replica_lag, wal_rate, waiters
    -- 0.7.0
    estimated_rows bigint,                           -- the planner's estimate of matching rows when the run planned
    -- 0.8.0
    workers       integer                            -- runners that walked the table (1 + helpers); NULL before work
);
CREATE INDEX runs_rule_started_idx ON token_cleanup.runs (rule_id, started_at DESC);
CREATE INDEX runs_started_idx ON token_cleanup.runs (started_at);
CREATE INDEX runs_running_idx ON token_cleanup.runs (id) WHERE status = 'running';
COMMENT ON TABLE token_cleanup.runs IS 'One row per run of a rule; pruned after pg_token_cleanup.history_retention';

-- Per rule, counters over its whole life, updated at the end of every run: pruning the history
-- never shrinks them. Kept without a foreign key, like the history.
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
    consecutive_failures integer NOT NULL DEFAULT 0,
    -- 0.7.0
    batches          bigint      NOT NULL DEFAULT 0,
    pause_seconds    jsonb       NOT NULL DEFAULT '{}', -- seconds paused per reason, over all runs
    backlog_rows     bigint,                         -- matching when the last run started: deleted if it succeeded, else estimated_rows
    backlog_at       timestamptz                     -- when that run started
);
COMMENT ON TABLE token_cleanup.rule_totals IS 'Lifetime counters per rule; never pruned';

-- Rules are configuration: pg_dump keeps them (history is not dumped).
SELECT pg_catalog.pg_extension_config_dump('token_cleanup.rules', '');
SELECT pg_catalog.pg_extension_config_dump('token_cleanup.rules_id_seq', '');

-- Non-superusers see and change only their own rules and runs.
ALTER TABLE token_cleanup.rules ENABLE ROW LEVEL SECURITY;
CREATE POLICY rules_owner ON token_cleanup.rules
    USING (owner = current_user) WITH CHECK (owner = current_user);
ALTER TABLE token_cleanup.runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY runs_owner ON token_cleanup.runs FOR SELECT USING (owner = current_user);
ALTER TABLE token_cleanup.rule_totals ENABLE ROW LEVEL SECURITY;
CREATE POLICY rule_totals_owner ON token_cleanup.rule_totals FOR SELECT USING (owner = current_user);

GRANT USAGE ON SCHEMA token_cleanup TO PUBLIC;
-- Column privileges, not table privileges: LOCK TABLE checks table privileges only, and UPDATE or
-- DELETE on the table would let any role take ACCESS EXCLUSIVE on it and stall pg_dump, the views,
-- every scheduler and every run() of the database. INSERT and UPDATE of the rule's own columns is all
-- a role needs; `id` is assigned (a role choosing it could inherit a deleted rule's lifetime
-- counters or take the ids others' inserts will draw); rules are deleted with
-- token_cleanup.delete_rule(name). A DBA who grants more (DELETE, table-level UPDATE) to a role lets
-- that role lock the table.
GRANT SELECT ON token_cleanup.rules TO PUBLIC;
GRANT INSERT (name, table_name, condition, schedule, batch_size, enabled, owner, lock_timeout,
              statement_timeout, max_rows_per_second, max_run_duration, timezone, archive_table,
              max_rows_per_run, max_fraction, drop_partitions, max_replica_lag, max_wal_rate,
              yield_to_waiters, parallel_workers)
    ON token_cleanup.rules TO PUBLIC;
GRANT UPDATE (name, table_name, condition, schedule, batch_size, enabled, owner, lock_timeout,
              statement_timeout, max_rows_per_second, max_run_duration, timezone, archive_table,
              max_rows_per_run, max_fraction, drop_partitions, max_replica_lag, max_wal_rate,
              yield_to_waiters, parallel_workers)
    ON token_cleanup.rules TO PUBLIC;
GRANT USAGE ON SEQUENCE token_cleanup.rules_id_seq TO PUBLIC;
GRANT SELECT ON token_cleanup.runs TO PUBLIC;
GRANT SELECT ON token_cleanup.rule_totals TO PUBLIC;

-- Validation and bookkeeping of every INSERT and UPDATE (owner, timestamps, immutable id, the
-- owner's right to change a rule, each field checked, table names stored canonical) is the trigger
-- rules_validate, created with its Rust function token_cleanup.rules_before_write() (src/rules/validate.rs).

-- Any change to the rules tells this database's scheduler, at commit, that the rules changed (a
-- relcache invalidation of the rules table, which COMMIT PREPARED delivers too) and wakes it, so it
-- reloads at once instead of polling the table. SECURITY DEFINER so that wake_scheduler() itself
-- need not be callable by every role; a trigger function cannot be called directly.
CREATE FUNCTION token_cleanup.rules_after_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM token_cleanup.wake_scheduler();
    RETURN NULL;
END
$$;

CREATE TRIGGER rules_wake_scheduler AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON token_cleanup.rules
    FOR EACH STATEMENT EXECUTE FUNCTION token_cleanup.rules_after_change();

-- Failed and refused runs, newest first when ordered by started_at: what went wrong, with the
-- rule's current count of consecutive failures. Each role sees its own rules' runs (see the views in
-- finish.sql on who sees which rows).
CREATE VIEW token_cleanup.errors AS
SELECT h.id        AS run_id,
       h.rule_name AS rule,
       h.rule_id,
       h.owner,
       h.trigger,
       h.status,
       h.started_at,
       h.finished_at,
       h.sqlstate,
       h.error        AS message,
       h.error_detail AS detail,
       h.error_hint   AS hint,
       coalesce(t.consecutive_failures, 0) AS consecutive_failures
  FROM token_cleanup.runs h
  LEFT JOIN token_cleanup.rule_totals t ON t.rule_id = h.rule_id
 WHERE h.status IN ('failed', 'refused')
   AND (h.owner = CURRENT_USER OR (SELECT a.rolsuper OR a.rolbypassrls FROM pg_catalog.pg_roles a WHERE a.rolname = CURRENT_USER));

GRANT SELECT ON token_cleanup.errors TO PUBLIC;

COMMENT ON VIEW token_cleanup.errors IS 'Failed and refused runs: what went wrong, with SQLSTATE, detail and hint';
COMMENT ON COLUMN token_cleanup.errors.run_id IS 'The run''s id';
COMMENT ON COLUMN token_cleanup.errors.rule IS 'The rule''s name when it ran';
COMMENT ON COLUMN token_cleanup.errors.rule_id IS 'The rule''s id';
COMMENT ON COLUMN token_cleanup.errors.owner IS 'The role the run deleted as';
COMMENT ON COLUMN token_cleanup.errors.trigger IS 'schedule | manual | retry';
COMMENT ON COLUMN token_cleanup.errors.status IS 'failed | refused';
COMMENT ON COLUMN token_cleanup.errors.started_at IS 'When the run started';
COMMENT ON COLUMN token_cleanup.errors.finished_at IS 'When the run ended';
COMMENT ON COLUMN token_cleanup.errors.sqlstate IS 'The error''s SQLSTATE';
COMMENT ON COLUMN token_cleanup.errors.message IS 'The error''s message';
COMMENT ON COLUMN token_cleanup.errors.detail IS 'The error''s DETAIL';
COMMENT ON COLUMN token_cleanup.errors.hint IS 'The error''s HINT: what to do about it';
COMMENT ON COLUMN token_cleanup.errors.consecutive_failures IS 'The rule''s failed runs since its last success, now';

-- What \d+ says of every table and column (finish.sql: of the views and functions).
COMMENT ON COLUMN token_cleanup.rules.id IS 'Assigned; never reused (run history and lifetime counters refer to it)';
COMMENT ON COLUMN token_cleanup.rules.name IS 'Unique in the database; how every function names the rule';
COMMENT ON COLUMN token_cleanup.rules.table_name IS 'The table rows are deleted from; stored schema-qualified';
COMMENT ON COLUMN token_cleanup.rules.condition IS 'One SQL expression over the table''s columns: rows where it is true are deleted';
COMMENT ON COLUMN token_cleanup.rules.schedule IS 'Cron schedule: 5 fields, 6 with seconds first, 7 with a year, or @hourly, @daily, @weekly, @monthly, @yearly';
COMMENT ON COLUMN token_cleanup.rules.batch_size IS 'Most rows deleted per batch (one transaction); NULL: pg_token_cleanup.batch_size';
COMMENT ON COLUMN token_cleanup.rules.enabled IS 'False: never scheduled (token_cleanup.run() still runs it)';
COMMENT ON COLUMN token_cleanup.rules.owner IS 'The role the deletes run as; defaults to the role that writes the rule';
COMMENT ON COLUMN token_cleanup.rules.lock_timeout IS 'How long a batch waits for a lock; NULL: pg_token_cleanup.lock_timeout';
COMMENT ON COLUMN token_cleanup.rules.statement_timeout IS 'Longest statement of a batch; NULL: pg_token_cleanup.statement_timeout';
COMMENT ON COLUMN token_cleanup.rules.max_rows_per_second IS 'Pace of deletes; NULL: pg_token_cleanup.max_rows_per_second; 0: no limit';
COMMENT ON COLUMN token_cleanup.rules.created_at IS 'When the rule was created';
COMMENT ON COLUMN token_cleanup.rules.updated_at IS 'When the rule was last changed';
COMMENT ON COLUMN token_cleanup.rules.max_run_duration IS 'A run stops between batches after this long; NULL: no limit';
COMMENT ON COLUMN token_cleanup.rules.timezone IS 'Time zone the schedule is read in; NULL: pg_token_cleanup.timezone';
COMMENT ON COLUMN token_cleanup.rules.archive_table IS 'Rows are moved here instead of deleted (same columns); NULL: none';
COMMENT ON COLUMN token_cleanup.rules.max_rows_per_run IS 'A run that would delete more rows is refused; NULL: no limit';
COMMENT ON COLUMN token_cleanup.rules.max_fraction IS 'A run that would delete more than this fraction of live rows is refused; NULL: pg_token_cleanup.max_fraction';
COMMENT ON COLUMN token_cleanup.rules.drop_partitions IS 'never | detach | drop: what a run does with a partition whose every row matches';
COMMENT ON COLUMN token_cleanup.rules.max_replica_lag IS 'Pause while a streaming replica is further behind; NULL: the setting; 0: off';
COMMENT ON COLUMN token_cleanup.rules.max_wal_rate IS 'Pause while WAL is written faster than this many MB/s; NULL: the setting; 0: off';
COMMENT ON COLUMN token_cleanup.rules.yield_to_waiters IS 'Pause while other sessions wait on the table; NULL: the setting';
COMMENT ON COLUMN token_cleanup.rules.parallel_workers IS 'Runners one run of a table walk may use at once on disjoint page ranges, free worker slots permitting; NULL: the setting';

COMMENT ON COLUMN token_cleanup.runs.id IS 'The run''s id, as run() returns it';
COMMENT ON COLUMN token_cleanup.runs.rule_id IS 'The rule''s id (kept after the rule is deleted)';
COMMENT ON COLUMN token_cleanup.runs.rule_name IS 'The rule''s name when it ran';
COMMENT ON COLUMN token_cleanup.runs.owner IS 'The role the run deleted as';
COMMENT ON COLUMN token_cleanup.runs.trigger IS 'schedule | manual (token_cleanup.run()) | retry';
COMMENT ON COLUMN token_cleanup.runs.status IS 'running | succeeded | failed | interrupted | stopped | refused';
COMMENT ON COLUMN token_cleanup.runs.scheduled_for IS 'The fire time a scheduled run was for';
COMMENT ON COLUMN token_cleanup.runs.started_at IS 'When the run started';
COMMENT ON COLUMN token_cleanup.runs.finished_at IS 'When the run ended; NULL while running';
COMMENT ON COLUMN token_cleanup.runs.rows_deleted IS 'Rows deleted (or moved to the archive) in committed batches';
COMMENT ON COLUMN token_cleanup.runs.batches IS 'Batches committed';
COMMENT ON COLUMN token_cleanup.runs.longest_batch_ms IS 'Longest batch, start to commit, in milliseconds';
COMMENT ON COLUMN token_cleanup.runs.method IS 'How rows were found: table walk | index | per shard';
COMMENT ON COLUMN token_cleanup.runs.error IS 'The error''s message, for a run that did not succeed';
COMMENT ON COLUMN token_cleanup.runs.pid IS 'Process id of the worker that ran it';
COMMENT ON COLUMN token_cleanup.runs.sqlstate IS 'The error''s SQLSTATE';
COMMENT ON COLUMN token_cleanup.runs.error_detail IS 'The error''s DETAIL';
COMMENT ON COLUMN token_cleanup.runs.error_hint IS 'The error''s HINT: what to do about it';
COMMENT ON COLUMN token_cleanup.runs.partitions IS 'Partitioned tables: rows and action per leaf partition';
COMMENT ON COLUMN token_cleanup.runs.partitions_dropped IS 'Leaf partitions dropped or detached whole';
COMMENT ON COLUMN token_cleanup.runs.start_delay IS 'How late a scheduled run started after its fire time';
COMMENT ON COLUMN token_cleanup.runs.paused IS 'Time spent paused by pacing';
COMMENT ON COLUMN token_cleanup.runs.pause_reasons IS 'Seconds paused per reason: replica_lag, wal_rate, waiters';
COMMENT ON COLUMN token_cleanup.runs.estimated_rows IS 'The planner''s estimate of matching rows when the run planned';
COMMENT ON COLUMN token_cleanup.runs.workers IS 'Runners that worked on the run: 1, or 1 plus the helpers parallel_workers got';

COMMENT ON COLUMN token_cleanup.rule_totals.rule_id IS 'The rule''s id';
COMMENT ON COLUMN token_cleanup.rule_totals.rule_name IS 'The rule''s name at its last run';
COMMENT ON COLUMN token_cleanup.rule_totals.owner IS 'The rule''s owner at its last run';
COMMENT ON COLUMN token_cleanup.rule_totals.runs IS 'Runs ended';
COMMENT ON COLUMN token_cleanup.rule_totals.succeeded IS 'Runs that succeeded';
COMMENT ON COLUMN token_cleanup.rule_totals.failed IS 'Runs that failed';
COMMENT ON COLUMN token_cleanup.rule_totals.interrupted IS 'Runs interrupted (shutdown, terminate, crash)';
COMMENT ON COLUMN token_cleanup.rule_totals.stopped IS 'Runs stopped (max_run_duration, rule changed, stop asked)';
COMMENT ON COLUMN token_cleanup.rule_totals.refused IS 'Runs refused by a blast-radius limit or a missing privilege';
COMMENT ON COLUMN token_cleanup.rule_totals.rows_deleted IS 'Rows deleted over all runs';
COMMENT ON COLUMN token_cleanup.rule_totals.run_time IS 'Time spent in runs';
COMMENT ON COLUMN token_cleanup.rule_totals.longest_run IS 'Longest run';
COMMENT ON COLUMN token_cleanup.rule_totals.longest_batch_ms IS 'Longest batch, in milliseconds';
COMMENT ON COLUMN token_cleanup.rule_totals.last_success_at IS 'When the last successful run ended';
COMMENT ON COLUMN token_cleanup.rule_totals.last_failure_at IS 'When the last failed run ended';
COMMENT ON COLUMN token_cleanup.rule_totals.consecutive_failures IS 'Failed runs since the last success';
COMMENT ON COLUMN token_cleanup.rule_totals.batches IS 'Batches committed over all runs';
COMMENT ON COLUMN token_cleanup.rule_totals.pause_seconds IS 'Seconds paused per reason over all runs: replica_lag, wal_rate, waiters';
COMMENT ON COLUMN token_cleanup.rule_totals.backlog_rows IS 'Rows matching when the last run started: what it deleted if it succeeded, else its estimated_rows';
COMMENT ON COLUMN token_cleanup.rule_totals.backlog_at IS 'When that run started';
