-- pg_token_cleanup 0.7.0 -> 0.8.0, run by ALTER EXTENSION pg_token_cleanup UPDATE.
-- Written by hand (see CONTRIBUTING.md): every change 0.8.0 made to the SQL objects of 0.7.0
-- (sql/pg_token_cleanup--0.7.0.sql). tests/e2e/upgrade.rs checks the result against a fresh 0.8.0
-- install, from every earlier release.

\echo Use "ALTER EXTENSION pg_token_cleanup UPDATE" to load this file. \quit

-- Parallel runs: a rule's runners at once (NULL: pg_token_cleanup.parallel_workers), and how many
-- a run got.
ALTER TABLE token_cleanup.rules ADD COLUMN parallel_workers integer;
ALTER TABLE token_cleanup.runs ADD COLUMN workers integer;
GRANT INSERT (parallel_workers), UPDATE (parallel_workers) ON token_cleanup.rules TO PUBLIC;

-- add_rule() and alter_rule() take every rules column as a parameter: parallel_workers is new, so
-- their signatures change (CREATE OR REPLACE would add an overload beside the old one).
DROP FUNCTION token_cleanup.add_rule(text, text, text, text, integer, boolean, name, interval, interval, integer, interval, text, text, bigint, real, text, interval, real, boolean, boolean);
DROP FUNCTION token_cleanup.alter_rule(text, text, text, text, integer, boolean, name, interval, interval, integer, interval, text, text, bigint, real, text, interval, real, boolean, text, text[]);

-- Creates a rule; every column of the rules table is a parameter of the same name and type, NULL
-- meaning its default. With if_not_exists, a rule of that name already there is left as it is, and
-- a NOTICE says whether it differs from this call.
CREATE FUNCTION token_cleanup.add_rule(
    name text, table_name text, condition text, schedule text DEFAULT '@hourly',
    batch_size integer DEFAULT NULL, enabled boolean DEFAULT NULL, owner name DEFAULT NULL,
    lock_timeout interval DEFAULT NULL, statement_timeout interval DEFAULT NULL,
    max_rows_per_second integer DEFAULT NULL, max_run_duration interval DEFAULT NULL,
    timezone text DEFAULT NULL, archive_table text DEFAULT NULL, max_rows_per_run bigint DEFAULT NULL,
    max_fraction real DEFAULT NULL, drop_partitions text DEFAULT NULL,
    max_replica_lag interval DEFAULT NULL, max_wal_rate real DEFAULT NULL,
    yield_to_waiters boolean DEFAULT NULL, parallel_workers integer DEFAULT NULL, if_not_exists boolean DEFAULT false)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    declared jsonb := token_cleanup.rule_declared(pg_catalog.jsonb_build_object(
        'name', add_rule.name, 'table_name', add_rule.table_name, 'condition', add_rule.condition,
        'schedule', add_rule.schedule, 'batch_size', add_rule.batch_size, 'enabled', add_rule.enabled,
        'owner', add_rule.owner, 'lock_timeout', add_rule.lock_timeout,
        'statement_timeout', add_rule.statement_timeout, 'max_rows_per_second', add_rule.max_rows_per_second,
        'max_run_duration', add_rule.max_run_duration, 'timezone', add_rule.timezone,
        'archive_table', add_rule.archive_table, 'max_rows_per_run', add_rule.max_rows_per_run,
        'max_fraction', add_rule.max_fraction, 'drop_partitions', add_rule.drop_partitions,
        'max_replica_lag', add_rule.max_replica_lag, 'max_wal_rate', add_rule.max_wal_rate,
        'yield_to_waiters', add_rule.yield_to_waiters,
        'parallel_workers', add_rule.parallel_workers), token_cleanup.rule_defaults());
    stored token_cleanup.rules;
    differing text[];
BEGIN
    SELECT * INTO stored FROM token_cleanup.rules r WHERE r.name OPERATOR(pg_catalog.=) add_rule.name;
    IF stored.id IS NULL THEN
        RETURN token_cleanup.rule_write(declared,
            ARRAY(SELECT pg_catalog.jsonb_object_keys(declared)), NULL);
    END IF;
    IF NOT if_not_exists THEN
        RAISE EXCEPTION 'rule "%" already exists', add_rule.name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Change it with token_cleanup.alter_rule(), or pass if_not_exists => true to leave it as it is.';
    END IF;
    differing := token_cleanup.rule_differences(declared, stored);
    IF differing OPERATOR(pg_catalog.=) '{}' THEN
        RAISE NOTICE 'rule "%" already exists as given, skipping', add_rule.name;
    ELSE
        RAISE NOTICE 'rule "%" already exists and differs in %, skipping', add_rule.name,
            pg_catalog.array_to_string(differing, ', ')
            USING HINT = 'Change it with token_cleanup.alter_rule(), or declare your rules with token_cleanup.apply_rules().';
    END IF;
    RETURN stored.id;
END
$$;

-- Changes the named rule: only the parameters given (new_name renames it); the columns listed in
-- clear go back to their defaults. A call that changes nothing writes nothing.
CREATE FUNCTION token_cleanup.alter_rule(
    name text, table_name text DEFAULT NULL, condition text DEFAULT NULL, schedule text DEFAULT NULL,
    batch_size integer DEFAULT NULL, enabled boolean DEFAULT NULL, owner name DEFAULT NULL,
    lock_timeout interval DEFAULT NULL, statement_timeout interval DEFAULT NULL,
    max_rows_per_second integer DEFAULT NULL, max_run_duration interval DEFAULT NULL,
    timezone text DEFAULT NULL, archive_table text DEFAULT NULL, max_rows_per_run bigint DEFAULT NULL,
    max_fraction real DEFAULT NULL, drop_partitions text DEFAULT NULL,
    max_replica_lag interval DEFAULT NULL, max_wal_rate real DEFAULT NULL,
    yield_to_waiters boolean DEFAULT NULL, parallel_workers integer DEFAULT NULL, new_name text DEFAULT NULL, clear text[] DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    given jsonb := pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'name', alter_rule.new_name, 'table_name', alter_rule.table_name, 'condition', alter_rule.condition,
        'schedule', alter_rule.schedule, 'batch_size', alter_rule.batch_size, 'enabled', alter_rule.enabled,
        'owner', alter_rule.owner, 'lock_timeout', alter_rule.lock_timeout,
        'statement_timeout', alter_rule.statement_timeout, 'max_rows_per_second', alter_rule.max_rows_per_second,
        'max_run_duration', alter_rule.max_run_duration, 'timezone', alter_rule.timezone,
        'archive_table', alter_rule.archive_table, 'max_rows_per_run', alter_rule.max_rows_per_run,
        'max_fraction', alter_rule.max_fraction, 'drop_partitions', alter_rule.drop_partitions,
        'max_replica_lag', alter_rule.max_replica_lag, 'max_wal_rate', alter_rule.max_wal_rate,
        'yield_to_waiters', alter_rule.yield_to_waiters,
        'parallel_workers', alter_rule.parallel_workers));
    defaults jsonb := token_cleanup.rule_defaults();
    required text[] := '{name,table_name,condition,schedule}';
    stored token_cleanup.rules;
    bad text;
    declared jsonb;
    differing text[];
BEGIN
    SELECT * INTO stored FROM token_cleanup.rules r WHERE r.name OPERATOR(pg_catalog.=) alter_rule.name;
    IF stored.id IS NULL THEN
        RAISE EXCEPTION 'rule "%" does not exist', alter_rule.name
            USING ERRCODE = 'undefined_object',
                  HINT = 'List your rules with SELECT name FROM token_cleanup.rules; non-superusers see only the rules they own.';
    END IF;
    SELECT c INTO bad FROM pg_catalog.unnest(clear) c
     WHERE NOT defaults OPERATOR(pg_catalog.?) c OR c OPERATOR(pg_catalog.=) ANY (required)
        OR given OPERATOR(pg_catalog.?) c
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'rule "%": cannot clear "%"', alter_rule.name, bad
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'clear lists optional columns to set back to their defaults, each not also given a value: '
                         OPERATOR(pg_catalog.||) (SELECT pg_catalog.string_agg(k, ', ' ORDER BY k)
                                                    FROM pg_catalog.jsonb_object_keys(defaults) k
                                                   WHERE NOT k OPERATOR(pg_catalog.=) ANY (required))
                         OPERATOR(pg_catalog.||) '.';
    END IF;
    declared := token_cleanup.rule_declared(
        (pg_catalog.to_jsonb(stored) OPERATOR(pg_catalog.-) 'id'::text
             OPERATOR(pg_catalog.-) 'created_at'::text OPERATOR(pg_catalog.-) 'updated_at'::text)
        OPERATOR(pg_catalog.||) given
        OPERATOR(pg_catalog.||) (SELECT coalesce(pg_catalog.jsonb_object_agg(c, defaults OPERATOR(pg_catalog.->) c), '{}')
                                   FROM pg_catalog.unnest(clear) c),
        defaults);
    differing := token_cleanup.rule_differences(declared, stored);
    IF differing OPERATOR(pg_catalog.<>) '{}' THEN
        PERFORM token_cleanup.rule_write(declared, differing, stored.id);
    END IF;
END
$$;

COMMENT ON FUNCTION token_cleanup.add_rule IS 'Creates a rule (every rules column a named parameter) and returns its id; if_not_exists leaves an existing one as it is';
COMMENT ON FUNCTION token_cleanup.alter_rule IS 'Changes the named parameters of a rule; new_name renames it, clear lists columns set back to their defaults';
COMMENT ON COLUMN token_cleanup.rules.parallel_workers IS 'Runners one run of a table walk may use at once on disjoint page ranges, free worker slots permitting; NULL: the setting';
COMMENT ON COLUMN token_cleanup.runs.workers IS 'Runners that worked on the run: 1, or 1 plus the helpers parallel_workers got';
