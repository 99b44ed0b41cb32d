// Knex's configuration for this example: node-postgres reads libpq's variables (PGHOST, PGPORT,
// PGUSER, PGDATABASE).
module.exports = {
  client: 'pg',
  connection: {},
  migrations: { directory: __dirname + '/migrations' },
};
