# Alembic's environment for this example: the database from libpq's variables, migrations online.
import os

from alembic import context
from sqlalchemy import create_engine

url = "postgresql+psycopg2://{user}@{host}:{port}/{db}".format(
    user=os.environ.get("PGUSER", "app"),
    host=os.environ.get("PGHOST", "127.0.0.1"),
    port=os.environ.get("PGPORT", "5432"),
    db=os.environ.get("PGDATABASE", "app"),
)
with create_engine(url).connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
