from django.db import models


class RefreshToken(models.Model):
    user_id = models.BigIntegerField()
    expires_at = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True)
