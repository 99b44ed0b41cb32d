"""the cleanup rules of refresh_tokens: safe to apply again (if_not_exists)"""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.execute(
        "SELECT token_cleanup.expire('refresh_tokens', 'expires_at', after => '1 day', "
        "schedule => '0 3 * * *', name => 'expired_refresh_tokens', if_not_exists => true)"
    )
    op.execute(
        "SELECT token_cleanup.add_rule('revoked_refresh_tokens', 'refresh_tokens', "
        "'revoked_at < now() - interval ''7 days''', schedule => '@hourly', "
        "batch_size => 1000, if_not_exists => true)"
    )


def downgrade():
    op.execute("SELECT token_cleanup.remove_rule('expired_refresh_tokens', if_exists => true)")
    op.execute("SELECT token_cleanup.remove_rule('revoked_refresh_tokens', if_exists => true)")
