-- Cleanup rules: a day after expiry, nightly; revoked tokens after a week, hourly. Applied again,
-- each call leaves its rule as it is and says so in a NOTICE.
SELECT token_cleanup.expire('refresh_tokens', 'expires_at', after => '1 day', schedule => '0 3 * * *',
                            name => 'expired_refresh_tokens', if_not_exists => true);
SELECT token_cleanup.add_rule('revoked_refresh_tokens', 'refresh_tokens',
                              'revoked_at < now() - interval ''7 days''',
                              schedule => '@hourly', batch_size => 1000, if_not_exists => true);
