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
