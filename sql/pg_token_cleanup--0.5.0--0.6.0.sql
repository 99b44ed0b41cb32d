-- pg_token_cleanup 0.5.0 -> 0.6.0, run by ALTER EXTENSION pg_token_cleanup UPDATE.
-- Written by hand (see CONTRIBUTING.md): every change 0.6.0 made to the SQL objects of 0.5.0
-- (sql/pg_token_cleanup--0.5.0.sql). tests/e2e/upgrade.rs checks the result against a fresh 0.6.0
-- install, from every earlier release.

\echo Use "ALTER EXTENSION pg_token_cleanup UPDATE" to load this file. \quit

-- The rules table's trigger is one Rust function that reads NEW by column name: the PL/pgSQL body
-- and the 15-argument check_rule() it passed the columns to are gone. Same checks, same errors, in
-- the same order; the trigger keeps its name, and with it its place among the table's triggers.
DROP TRIGGER rules_validate ON token_cleanup.rules;
DROP FUNCTION token_cleanup.rules_before_write();
DROP FUNCTION token_cleanup.check_rule(text, text, text, text, integer, text, double precision,
    double precision, integer, double precision, text, text, bigint, real, text);

CREATE FUNCTION token_cleanup."rules_before_write"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'rules_before_write_wrapper';

CREATE TRIGGER rules_validate BEFORE INSERT OR UPDATE ON token_cleanup.rules
    FOR EACH ROW EXECUTE FUNCTION token_cleanup.rules_before_write();

-- Rules on sharded Citus tables: the coordinator's runner calls these on the node that holds each
-- shard, as the role the rule runs as (see src/executor/on_shard.rs). They run as their caller.
CREATE FUNCTION token_cleanup."shard_batch"(
	"shard" TEXT,
	"condition" TEXT,
	"from_block" bigint,
	"from_offset" INT,
	"pages" bigint,
	"batch_limit" INT,
	"lock_timeout_ms" INT,
	"statement_timeout_ms" INT,
	"archive" TEXT
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'shard_batch_wrapper';

CREATE FUNCTION token_cleanup."shard_plan"(
	"shards" TEXT[],
	"condition" TEXT,
	"lock_timeout_ms" INT,
	"statement_timeout_ms" INT
) RETURNS TEXT
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'shard_plan_wrapper';

-- A run on a sharded Citus table records its method as 'per shard'.
ALTER TABLE token_cleanup.runs DROP CONSTRAINT runs_method_check,
    ADD CONSTRAINT runs_method_check CHECK (method IN ('table walk', 'index', 'per shard'));

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
