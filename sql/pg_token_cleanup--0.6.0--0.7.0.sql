-- pg_token_cleanup 0.6.0 -> 0.7.0, run by ALTER EXTENSION pg_token_cleanup UPDATE.
-- Written by hand (see CONTRIBUTING.md): every change 0.7.0 made to the SQL objects of 0.6.0
-- (sql/pg_token_cleanup--0.6.0.sql). tests/e2e/upgrade.rs checks the result against a fresh 0.7.0
-- install, from every earlier release.

\echo Use "ALTER EXTENSION pg_token_cleanup UPDATE" to load this file. \quit
