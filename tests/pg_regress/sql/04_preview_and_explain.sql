-- preview(): what a rule would delete now, as its owner; deletes nothing.
SET ROLE regress_app;
SELECT * FROM token_cleanup.preview('refresh_tokens');
SELECT count(*) AS still_there FROM public.refresh_tokens;
-- explain(): how a run would find its rows.
SELECT rule, table_name, method, estimated_rows, live_rows FROM token_cleanup.explain('refresh_tokens');
\set VERBOSITY verbose
-- Another role's rule is indistinguishable from a missing one.
SELECT * FROM token_cleanup.preview('other_sessions');
SELECT * FROM token_cleanup.run('no_such_rule');
\set VERBOSITY default
RESET ROLE;
-- The internal wake-up functions are not for PUBLIC.
SET ROLE regress_app;
SELECT token_cleanup.wake_scheduler();
SELECT token_cleanup.wake_launcher();
RESET ROLE;
