exports.up = (knex) =>
  knex.schema.createTable('refresh_tokens', (t) => {
    t.bigIncrements('id');
    t.bigInteger('user_id').notNullable();
    t.timestamp('expires_at', { useTz: true }).notNullable().index();
    t.timestamp('revoked_at', { useTz: true });
  });

exports.down = (knex) => knex.schema.dropTable('refresh_tokens');
