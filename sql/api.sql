-- The function API for rules: add_rule(), alter_rule(), remove_rule(), expire(), apply_rules() and
-- export_rules(). Each function writes the rules table with an ordinary
-- INSERT, UPDATE or delete_rule(), so the rules trigger validates what they write exactly as it
-- validates a user's own INSERT or UPDATE: one validation, the same errors.
--
-- They run as their caller (no SECURITY DEFINER): a role changes only its own rules, through its
-- own column privileges and the table's row-level security. Those that write or compare a rule's
-- table_name keep the caller's search_path (no SET clause), because the name is resolved with it, as
-- an INSERT resolves it; every function and operator they use themselves is schema-qualified. The
-- others pin search_path to pg_catalog.
--
-- A rule declared as JSON (apply_rules(), export_rules()) is an object keyed by the columns of
-- token_cleanup.rules that a rule sets (all but id, created_at and updated_at); a column left out
-- takes its default. The list of columns and their defaults is read from the table itself, so a new
-- rule column needs nothing here but a parameter of add_rule() and alter_rule().

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
