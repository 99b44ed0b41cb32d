// An application's start-up: its cleanup rules declared from its own configuration, as NestJS-style
// services configure their cleanup (REFRESH_TOKEN_CLEANUP_CRON), and made so in the database with
// token_cleanup.apply_rules(). Every instance may run it at every start: a rule that already matches
// is not written, so instances agree and nothing is rescheduled. Under NODE_ENV=test the rules are
// declared disabled: nothing is scheduled, and a test still runs them on demand with
// token_cleanup.run(). The database from libpq's variables (PGHOST, PGPORT, PGUSER, PGDATABASE).
//   node cleanup-rules.js      prints what apply_rules() did, one JSON object per rule
const { Client } = require('pg');

function declaredRules(env) {
  return [
    {
      name: 'expired_refresh_tokens',
      table_name: 'refresh_tokens',
      condition: "expires_at < now() - interval '1 day'",
      schedule: env.REFRESH_TOKEN_CLEANUP_CRON || '0 3 * * *',
      enabled: env.NODE_ENV !== 'test',
    },
  ];
}

async function main() {
  const client = new Client();
  await client.connect();
  try {
    const { rows } = await client.query(
      'SELECT rule, action, columns FROM token_cleanup.apply_rules($1::jsonb, prune => true)',
      [JSON.stringify(declaredRules(process.env))]
    );
    for (const row of rows) console.log(JSON.stringify(row));
  } finally {
    await client.end();
  }
}

main().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
