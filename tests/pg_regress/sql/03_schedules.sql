SET TimeZone = 'UTC';
-- Schedules: next fire times (5-field crontab, 6-field with seconds, Quartz 7-field, macros).
SELECT * FROM token_cleanup.next_runs('0 3 * * *', '2026-01-01 00:00:00+00', 3);
SELECT * FROM token_cleanup.next_runs('*/20 * * * * *', '2026-01-01 00:00:00+00', 4);
SELECT * FROM token_cleanup.next_runs('0 0/30 * 1/1 * ? *', '2026-01-01 00:10:00+00', 3);
SELECT * FROM token_cleanup.next_runs('@weekly', '2026-01-01 00:00:00+00', 2);
SELECT * FROM token_cleanup.next_runs('0 9 * * mon-fri', '2026-01-02 10:00:00+00', 3);
\set VERBOSITY verbose
SELECT * FROM token_cleanup.next_runs('0 25 * * *', now(), 1);
\set VERBOSITY default
-- In the rule's time zone: 03:00 in New York is 07:00 or 08:00 UTC by the season.
SELECT token_cleanup.next_run('0 3 * * *', 'America/New_York') IS NOT NULL AS has_next;
