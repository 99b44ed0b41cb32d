-- pg_token_cleanup 0.3.0 -> 0.4.0, run by ALTER EXTENSION pg_token_cleanup UPDATE.
-- Written by hand (see CONTRIBUTING.md): every change 0.4.0 made to the SQL objects of 0.3.0
-- (sql/pg_token_cleanup--0.3.0.sql). tests/upgrade.rs checks the result against a fresh 0.4.0
-- install, from 0.3.0, 0.2.0 and 0.1.0.

\echo Use "ALTER EXTENSION pg_token_cleanup UPDATE" to load this file. \quit

-- No role can lock the rules table through PUBLIC's grants (see sql/schema.sql): PUBLIC's table-level
-- INSERT, UPDATE and DELETE become INSERT and UPDATE of the rule's own columns. A DBA who had
-- revoked INSERT or UPDATE from PUBLIC keeps that choice; grants to other roles are left alone.
-- Rules are deleted with token_cleanup.delete_rule(name).
DO $grants$
DECLARE
    public_insert pg_catalog.bool;
    public_update pg_catalog.bool;
BEGIN
    SELECT coalesce(pg_catalog.bool_or(a.privilege_type OPERATOR(pg_catalog.=) 'INSERT'), false),
           coalesce(pg_catalog.bool_or(a.privilege_type OPERATOR(pg_catalog.=) 'UPDATE'), false)
      INTO public_insert, public_update
      FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
     WHERE c.oid OPERATOR(pg_catalog.=) 'token_cleanup.rules'::pg_catalog.regclass
       AND a.grantee OPERATOR(pg_catalog.=) 0;
    REVOKE INSERT, UPDATE, DELETE ON token_cleanup.rules FROM PUBLIC;
    IF public_insert THEN
        GRANT INSERT (name, table_name, condition, schedule, batch_size, enabled, owner, lock_timeout,
                      statement_timeout, max_rows_per_second, max_run_duration, timezone, archive_table,
                      max_rows_per_run, max_fraction, drop_partitions, max_replica_lag, max_wal_rate,
                      yield_to_waiters)
            ON token_cleanup.rules TO PUBLIC;
    END IF;
    IF public_update THEN
        GRANT UPDATE (name, table_name, condition, schedule, batch_size, enabled, owner, lock_timeout,
                      statement_timeout, max_rows_per_second, max_run_duration, timezone, archive_table,
                      max_rows_per_run, max_fraction, drop_partitions, max_replica_lag, max_wal_rate,
                      yield_to_waiters)
            ON token_cleanup.rules TO PUBLIC;
    END IF;
END
$grants$;

-- A BYPASSRLS role may change only its own rules.
CREATE OR REPLACE FUNCTION token_cleanup.rules_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    canonical pg_catalog.text[];
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        NEW.owner := coalesce(NEW.owner, current_user);
        NEW.created_at := pg_catalog.now();
    ELSE
        -- Row-level security keeps other roles' rules out of reach, except for a BYPASSRLS role,
        -- which could otherwise rewrite a rule that runs as its owner.
        IF OLD.owner OPERATOR(pg_catalog.<>) current_user
           AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user) THEN
            RAISE EXCEPTION 'rule "%" belongs to role "%": only its owner or a superuser may change it', OLD.name, OLD.owner
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Ask the rule''s owner, or a superuser, to change it.';
        END IF;
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

-- Deleting a rule, now that PUBLIC holds no DELETE on the rules table (src/api.rs).
CREATE FUNCTION token_cleanup."delete_rule"(
	"rule_name" TEXT /* & str */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'delete_rule_wrapper';

-- The views are security barriers on every version, set after security_invoker as a fresh install
-- sets them (pg_dump shows the options in the order they were set).
ALTER VIEW token_cleanup.rule_stats SET (security_barrier = true);
ALTER VIEW token_cleanup.progress SET (security_barrier = true);
ALTER VIEW token_cleanup.metrics SET (security_barrier = true);

-- The scheduler ran nothing in this database while it was at 0.3.0: it loads the rules now.
SELECT token_cleanup.wake_scheduler();
