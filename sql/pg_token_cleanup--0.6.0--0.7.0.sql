-- pg_token_cleanup 0.6.0 -> 0.7.0, run by ALTER EXTENSION pg_token_cleanup UPDATE.
-- Written by hand (see CONTRIBUTING.md): every change 0.7.0 made to the SQL objects of 0.6.0
-- (sql/pg_token_cleanup--0.6.0.sql). tests/e2e/upgrade.rs checks the result against a fresh 0.7.0
-- install, from every earlier release.

\echo Use "ALTER EXTENSION pg_token_cleanup UPDATE" to load this file. \quit

-- Counters for monitoring: each run records the planner's estimate of its matching rows, and the
-- lifetime totals keep batches, seconds paused per reason and the last backlog.
ALTER TABLE token_cleanup.runs ADD COLUMN estimated_rows bigint;
ALTER TABLE token_cleanup.rule_totals
    ADD COLUMN batches bigint NOT NULL DEFAULT 0,
    ADD COLUMN pause_seconds jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN backlog_rows bigint,
    ADD COLUMN backlog_at timestamptz;

-- The metrics view names its columns now (it read its tables with *, which a view expands when it
-- is created); its output is the same.
CREATE OR REPLACE VIEW token_cleanup.metrics AS
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
DO $$
BEGIN
    IF pg_catalog.current_setting('server_version_num')::int >= 150000 THEN
        ALTER VIEW token_cleanup.metrics SET (security_invoker = true);
    END IF;
END
$$;
ALTER VIEW token_cleanup.metrics SET (security_barrier = true);

-- The worker budget as the monitoring reads it.
CREATE FUNCTION token_cleanup."worker_budget"() RETURNS TABLE (
	"in_use" INT,
	"budget" INT,
	"waiting" INT
)
STRICT VOLATILE PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'worker_budget_wrapper';

-- The function API for rules (add_rule, alter_rule, remove_rule, expire, apply_rules,
-- export_rules and their helpers): sql/api.sql, as a fresh install has it.
-- The columns a rule sets, each with its default (JSON null for none), read from the catalog.
CREATE FUNCTION token_cleanup.rule_defaults() RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col record;
    value jsonb;
    defaults jsonb := '{}';
BEGIN
    FOR col IN
        SELECT a.attname, pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS expr
          FROM pg_catalog.pg_attribute a
          LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = 'token_cleanup.rules'::pg_catalog.regclass AND a.attnum > 0
           AND NOT a.attisdropped AND a.attname NOT IN ('id', 'created_at', 'updated_at')
    LOOP
        value := 'null';
        IF col.expr IS NOT NULL THEN
            EXECUTE pg_catalog.format('SELECT pg_catalog.to_jsonb(%s)', col.expr) INTO value;
        END IF;
        defaults := defaults OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(col.attname, value);
    END LOOP;
    RETURN defaults;
END
$$;

-- A declared rule made whole: every column a rule sets, as declared or else its default, each value
-- read as the column's type and written back as JSON (so '1 hour' and '01:00:00' are one value).
-- Refuses what is not a rule's column, naming it. `defaults` is what rule_defaults() returns, read
-- once by the caller (a list of rules is checked against one reading).
CREATE FUNCTION token_cleanup.rule_declared(declared jsonb, defaults jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rule_name text := declared OPERATOR(pg_catalog.->>) 'name';
    unknown text;
    typed token_cleanup.rules;
BEGIN
    IF coalesce(pg_catalog.jsonb_typeof(declared), '') <> 'object' THEN
        RAISE EXCEPTION 'a rule is declared as a JSON object, got: %', pg_catalog.left(declared::text, 200)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Declare each rule as an object keyed by the columns of token_cleanup.rules, e.g. {"name": "expired_tokens", "table_name": "tokens", "condition": "expires_at < now()", "schedule": "@hourly"}.';
    END IF;
    SELECT k INTO unknown FROM pg_catalog.jsonb_object_keys(declared) k
     WHERE NOT defaults OPERATOR(pg_catalog.?) k ORDER BY k LIMIT 1;
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'rule "%": "%" is not a column that a rule sets', rule_name, unknown
            USING ERRCODE = 'undefined_column',
                  HINT = 'The columns a rule sets: ' OPERATOR(pg_catalog.||)
                         (SELECT pg_catalog.string_agg(k, ', ' ORDER BY k) FROM pg_catalog.jsonb_object_keys(defaults) k)
                         OPERATOR(pg_catalog.||) '.';
    END IF;
    BEGIN
        typed := pg_catalog.jsonb_populate_record(NULL::token_cleanup.rules,
                     defaults OPERATOR(pg_catalog.||) pg_catalog.jsonb_strip_nulls(declared));
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'rule "%": %', rule_name, SQLERRM
            USING ERRCODE = SQLSTATE,
                  HINT = 'Give each column a value of its type in token_cleanup.rules (intervals as text, e.g. "5 seconds").';
    END;
    RETURN pg_catalog.to_jsonb(typed) OPERATOR(pg_catalog.-) 'id'::text
           OPERATOR(pg_catalog.-) 'created_at'::text OPERATOR(pg_catalog.-) 'updated_at'::text;
END
$$;

-- The columns whose declared value differs from the stored rule's, in name order. Table names are
-- compared by the tables they name (a rule stores them schema-qualified).
CREATE FUNCTION token_cleanup.rule_differences(declared jsonb, stored token_cleanup.rules) RETURNS text[]
LANGUAGE sql STABLE AS $$
-- (OPERATOR(…) binds as any other operator does, left to right: hence the parentheses.)
SELECT coalesce(pg_catalog.array_agg(d.key ORDER BY d.key), '{}')
  FROM pg_catalog.jsonb_each(declared) d,
       LATERAL (SELECT pg_catalog.to_jsonb(stored) OPERATOR(pg_catalog.->) d.key AS value) s
 WHERE CASE WHEN d.key OPERATOR(pg_catalog.=) ANY ('{table_name,archive_table}'::text[])
            -- the tables named (0: none, or none found), and whether a name is given at all
            THEN (coalesce(pg_catalog.to_regclass(d.value OPERATOR(pg_catalog.#>>) '{}')::oid, 0)
                  OPERATOR(pg_catalog.<>) coalesce(pg_catalog.to_regclass(s.value OPERATOR(pg_catalog.#>>) '{}')::oid, 0))
              OR (pg_catalog.jsonb_typeof(d.value) OPERATOR(pg_catalog.<>) pg_catalog.jsonb_typeof(s.value))
            ELSE d.value OPERATOR(pg_catalog.<>) s.value END
$$;

-- Writes a declared rule: an INSERT of every column when rule_id is NULL, else an UPDATE of the
-- columns named. Returns the rule's id. The trigger's error is raised again as it was (message,
-- SQLSTATE, detail, hint), without the generated statement as its context.
CREATE FUNCTION token_cleanup.rule_write(declared jsonb, columns text[], rule_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    list text := (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ') FROM pg_catalog.unnest(columns) c);
    written bigint := rule_id;
    state text;
    message text;
    detail text;
    hint text;
BEGIN
    IF rule_id IS NULL THEN
        EXECUTE pg_catalog.format(
            'INSERT INTO token_cleanup.rules (%1$s) SELECT %1$s FROM pg_catalog.jsonb_populate_record(NULL::token_cleanup.rules, $1) RETURNING id',
            list) USING declared INTO written;
    ELSE
        EXECUTE pg_catalog.format(
            'UPDATE token_cleanup.rules SET (%1$s) = (SELECT %1$s FROM pg_catalog.jsonb_populate_record(NULL::token_cleanup.rules, $1)) WHERE id OPERATOR(pg_catalog.=) $2',
            list) USING declared, rule_id;
    END IF;
    RETURN written;
EXCEPTION
    WHEN unique_violation THEN
        -- add_rule() and apply_rules() look for the name first: it is another role's rule.
        RAISE EXCEPTION 'a rule named "%" already exists, owned by another role', declared OPERATOR(pg_catalog.->>) 'name'
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Rule names are unique in the database: choose another name.';
    WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                                detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
        -- Absent fields read as ''; RAISE would send them as empty lines.
        IF detail OPERATOR(pg_catalog.=) '' AND hint OPERATOR(pg_catalog.=) '' THEN
            RAISE EXCEPTION USING MESSAGE = message, ERRCODE = state;
        ELSIF detail OPERATOR(pg_catalog.=) '' THEN
            RAISE EXCEPTION USING MESSAGE = message, ERRCODE = state, HINT = hint;
        ELSIF hint OPERATOR(pg_catalog.=) '' THEN
            RAISE EXCEPTION USING MESSAGE = message, ERRCODE = state, DETAIL = detail;
        ELSE
            RAISE EXCEPTION USING MESSAGE = message, ERRCODE = state, DETAIL = detail, HINT = hint;
        END IF;
END
$$;

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
    yield_to_waiters boolean DEFAULT NULL, if_not_exists boolean DEFAULT false)
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
        'yield_to_waiters', add_rule.yield_to_waiters), token_cleanup.rule_defaults());
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
    yield_to_waiters boolean DEFAULT NULL, new_name text DEFAULT NULL, clear text[] DEFAULT '{}')
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
        'yield_to_waiters', alter_rule.yield_to_waiters));
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

-- Removes the named rule (through delete_rule()); with if_exists, a rule that is not there is a
-- NOTICE. True when a rule was removed.
CREATE FUNCTION token_cleanup.remove_rule(name text, if_exists boolean DEFAULT false)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF if_exists AND NOT EXISTS (SELECT FROM token_cleanup.rules r WHERE r.name OPERATOR(pg_catalog.=) remove_rule.name) THEN
        RAISE NOTICE 'rule "%" does not exist, skipping', remove_rule.name;
        RETURN false;
    END IF;
    RETURN token_cleanup.delete_rule(remove_rule.name);
END
$$;

-- A rule that deletes the rows of table_name whose column_name is more than `after` in the past:
-- column_name holds a timestamp, a date, or seconds since the epoch as a number. Named after the
-- table unless named. A NOTICE says which index would serve the rule when none does.
CREATE FUNCTION token_cleanup.expire(
    table_name text, column_name text, after interval DEFAULT '0', schedule text DEFAULT '@hourly',
    name text DEFAULT NULL, if_not_exists boolean DEFAULT false)
-- The interval is written into the condition in one style, whatever the caller's.
RETURNS bigint LANGUAGE plpgsql SET IntervalStyle = 'postgres' AS $$
DECLARE
    target regclass := pg_catalog.to_regclass(expire.table_name);
    col record;
    cutoff text := CASE WHEN expire.after OPERATOR(pg_catalog.=) '0'::interval THEN 'now()'
                        ELSE pg_catalog.format('now() - interval %L', expire.after) END;
    condition text;
BEGIN
    IF target IS NULL THEN
        -- add_rule() says that the table does not exist, as a rule written any other way would.
        RETURN token_cleanup.add_rule(name => coalesce(expire.name, expire.table_name),
            table_name => expire.table_name, condition => 'false', schedule => expire.schedule,
            if_not_exists => expire.if_not_exists);
    END IF;
    SELECT a.attnum, a.atttypid, pg_catalog.format_type(a.atttypid, NULL) AS type INTO col
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid OPERATOR(pg_catalog.=) target AND a.attname OPERATOR(pg_catalog.=) expire.column_name
       AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped;
    IF col.attnum IS NULL THEN
        RAISE EXCEPTION 'column "%" of table % does not exist', expire.column_name, target
            USING ERRCODE = 'undefined_column',
                  HINT = 'Name the column that says when a row expires, e.g. expires_at.';
    END IF;
    IF col.type OPERATOR(pg_catalog.=) ANY ('{timestamp with time zone,timestamp without time zone,date}'::text[]) THEN
        condition := pg_catalog.format('%I < %s', expire.column_name, cutoff);
    ELSIF col.type OPERATOR(pg_catalog.=) ANY ('{smallint,integer,bigint,numeric,real,double precision}'::text[]) THEN
        condition := pg_catalog.format('%I < extract(epoch FROM %s)::%s', expire.column_name, cutoff, col.type);
    ELSE
        RAISE EXCEPTION 'column "%" of table % is of type %, not a timestamp, date or epoch number', expire.column_name, target, col.type
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'expire() needs a timestamp, date, or seconds since 1970 as a number; for anything else write the condition with token_cleanup.add_rule().';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i
                    WHERE i.indrelid OPERATOR(pg_catalog.=) target AND i.indisvalid
                      AND i.indkey[0] OPERATOR(pg_catalog.=) col.attnum) THEN
        RAISE NOTICE 'no index of % starts with %: each run reads the whole table to find expired rows', target, expire.column_name
            USING HINT = pg_catalog.format('CREATE INDEX CONCURRENTLY ON %s (%I) would serve it.', target, expire.column_name);
    END IF;
    RETURN token_cleanup.add_rule(
        name => coalesce(expire.name, (SELECT c.relname::text FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) target)),
        table_name => expire.table_name, condition => condition, schedule => expire.schedule,
        if_not_exists => expire.if_not_exists);
END
$$;

-- The caller's rules as a declared list: a JSON array of objects, one per rule in name order, with
-- every column that is not at its default (the owner, always the caller, left out).
-- apply_rules(export_rules()) changes nothing.
CREATE FUNCTION token_cleanup.export_rules() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
WITH d AS MATERIALIZED (SELECT token_cleanup.rule_defaults() AS defaults)
SELECT coalesce(pg_catalog.jsonb_agg(declared.rule ORDER BY r.name), '[]')
  FROM token_cleanup.rules r
 CROSS JOIN d
 CROSS JOIN LATERAL (
       SELECT pg_catalog.jsonb_object_agg(c.key, c.value) AS rule
         FROM pg_catalog.jsonb_each(pg_catalog.to_jsonb(r)) c
        WHERE c.key NOT IN ('id', 'created_at', 'updated_at', 'owner')
          AND c.value IS DISTINCT FROM d.defaults -> c.key) declared
 WHERE r.owner = CURRENT_USER
$$;

-- Makes the caller's rules match the declared list (a JSON array as export_rules() writes it), in
-- the caller's transaction: a rule not there is created, one that differs is changed in the
-- columns that differ, one that matches is not written at all; with prune, the caller's rules not
-- in the list are removed. One row per rule: created, changed (with the columns), unchanged, removed.
CREATE FUNCTION token_cleanup.apply_rules(rules jsonb, prune boolean DEFAULT false)
RETURNS TABLE (rule text, action text, columns text[]) LANGUAGE plpgsql AS $$
DECLARE
    defaults jsonb := token_cleanup.rule_defaults();
    item jsonb;
    declared jsonb;
    stored token_cleanup.rules;
    differing text[];
    twice text;
BEGIN
    IF coalesce(pg_catalog.jsonb_typeof(rules), '') OPERATOR(pg_catalog.<>) 'array' THEN
        RAISE EXCEPTION 'apply_rules() takes a JSON array of rules, got: %', pg_catalog.left(rules::text, 200)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass an array of objects keyed by the columns of token_cleanup.rules, as token_cleanup.export_rules() returns.';
    END IF;
    SELECT r OPERATOR(pg_catalog.->>) 'name' INTO twice FROM pg_catalog.jsonb_array_elements(rules) r
     GROUP BY 1 HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1 LIMIT 1;
    IF twice IS NOT NULL THEN
        RAISE EXCEPTION 'rule "%" is declared twice', twice
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Declare each rule once.';
    END IF;
    FOR item IN SELECT r FROM pg_catalog.jsonb_array_elements(rules) r LOOP
        IF coalesce(item OPERATOR(pg_catalog.->>) 'owner', CURRENT_USER) OPERATOR(pg_catalog.<>) CURRENT_USER THEN
            RAISE EXCEPTION 'rule "%" is declared with owner "%": apply_rules() manages the caller''s own rules', item OPERATOR(pg_catalog.->>) 'name', item OPERATOR(pg_catalog.->>) 'owner'
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Leave owner out (it is the caller), or apply that role''s rules as that role.';
        END IF;
        declared := token_cleanup.rule_declared(item OPERATOR(pg_catalog.||)
                                                pg_catalog.jsonb_build_object('owner', CURRENT_USER), defaults);
        rule := declared OPERATOR(pg_catalog.->>) 'name';
        SELECT * INTO stored FROM token_cleanup.rules r WHERE r.name OPERATOR(pg_catalog.=) apply_rules.rule;
        IF stored.id IS NULL THEN
            PERFORM token_cleanup.rule_write(declared, ARRAY(SELECT pg_catalog.jsonb_object_keys(declared)), NULL);
            action := 'created';
            columns := NULL;
        ELSIF stored.owner OPERATOR(pg_catalog.<>) CURRENT_USER THEN
            RAISE EXCEPTION 'rule "%" belongs to role "%": apply_rules() manages the caller''s own rules', rule, stored.owner
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Choose another name, or apply that role''s rules as that role.';
        ELSE
            differing := token_cleanup.rule_differences(declared, stored);
            IF differing OPERATOR(pg_catalog.=) '{}' THEN
                action := 'unchanged';
                columns := NULL;
            ELSE
                PERFORM token_cleanup.rule_write(declared, differing, stored.id);
                action := 'changed';
                columns := differing;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF prune THEN
        FOR rule IN
            SELECT r.name FROM token_cleanup.rules r
             WHERE r.owner OPERATOR(pg_catalog.=) CURRENT_USER
               AND NOT r.name OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT d OPERATOR(pg_catalog.->>) 'name' FROM pg_catalog.jsonb_array_elements(rules) d))
             ORDER BY r.name
        LOOP
            PERFORM token_cleanup.delete_rule(rule);
            action := 'removed';
            columns := NULL;
            RETURN NEXT;
        END LOOP;
    END IF;
END
$$;

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

-- The new views run as their caller and are security barriers, as the other views are (finish.sql).
DO $$
BEGIN
    IF pg_catalog.current_setting('server_version_num')::int >= 150000 THEN
        ALTER VIEW token_cleanup.errors SET (security_invoker = true);
        ALTER VIEW token_cleanup.prometheus SET (security_invoker = true);
    END IF;
END
$$;
ALTER VIEW token_cleanup.errors SET (security_barrier = true);
ALTER VIEW token_cleanup.prometheus SET (security_barrier = true);

-- What \d+ and \df+ say: every column, view and function has a comment (schema.sql, finish.sql).
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
