# The smallest Django project that owns a refresh-token table; the database from libpq's variables.
import os

SECRET_KEY = "example-only"
INSTALLED_APPS = ["oauth"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "app"),
        "NAME": os.environ.get("PGDATABASE", "app"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
