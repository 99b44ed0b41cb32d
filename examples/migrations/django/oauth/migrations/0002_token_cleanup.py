# The cleanup rules of oauth_refreshtoken, as a RunSQL migration. if_not_exists makes it safe to apply
# again; reverse_sql removes the rules on a migration back.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("oauth", "0001_initial")]
    operations = [
        migrations.RunSQL(
            sql=[
                "SELECT token_cleanup.expire('oauth_refreshtoken', 'expires_at', after => '1 day', "
                "schedule => '0 3 * * *', name => 'expired_refresh_tokens', if_not_exists => true)",
                "SELECT token_cleanup.add_rule('revoked_refresh_tokens', 'oauth_refreshtoken', "
                "'revoked_at < now() - interval ''7 days''', schedule => '@hourly', "
                "batch_size => 1000, if_not_exists => true)",
            ],
            reverse_sql=[
                "SELECT token_cleanup.remove_rule('expired_refresh_tokens', if_exists => true)",
                "SELECT token_cleanup.remove_rule('revoked_refresh_tokens', if_exists => true)",
            ],
        ),
    ]
