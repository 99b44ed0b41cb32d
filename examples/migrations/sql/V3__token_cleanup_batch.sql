-- A later change to a rule: alter_rule() changes only what it is given, and writes nothing when the
-- rule already is so.
SELECT token_cleanup.alter_rule('revoked_refresh_tokens', batch_size => 2000, max_run_duration => '10 minutes');
