// The cleanup rules of refresh_tokens: safe to apply again (if_not_exists).
exports.up = async (knex) => {
  await knex.raw(
    "SELECT token_cleanup.expire('refresh_tokens', 'expires_at', after => '1 day', " +
      "schedule => '0 3 * * *', name => 'expired_refresh_tokens', if_not_exists => true)"
  );
  await knex.raw(
    "SELECT token_cleanup.add_rule('revoked_refresh_tokens', 'refresh_tokens', " +
      "'revoked_at < now() - interval ''7 days''', schedule => '@hourly', " +
      'batch_size => 1000, if_not_exists => true)'
  );
};

exports.down = async (knex) => {
  await knex.raw("SELECT token_cleanup.remove_rule('expired_refresh_tokens', if_exists => true)");
  await knex.raw("SELECT token_cleanup.remove_rule('revoked_refresh_tokens', if_exists => true)");
};
