#!/usr/bin/env bash
# The migration tools that tests/e2e/migrations.rs runs the examples in examples/migrations/ with,
# installed into target/migration_tools (nothing on the machine): Django and Alembic (with
# SQLAlchemy and psycopg2) in a Python virtual environment from PyPI, Knex and node-postgres from the
# npm registry. Idempotent: a second call finds them and returns at once.
#   bash scripts/migration_tools.sh     prints the directory
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$PWD/target/migration_tools
mkdir -p target
# The tests that need the tools run side by side: one installs, the others wait for it.
exec 9>"$PWD/target/migration_tools.lock"
flock 9
if [ ! -f "$dir/done" ]; then
    rm -rf "$dir" && mkdir -p "$dir"
    python3 -m venv "$dir/venv" >&2
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check \
        'django==5.2.*' 'alembic==1.16.*' 'sqlalchemy==2.0.*' 'psycopg2-binary==2.9.*' >&2
    (cd "$dir" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund knex@3 pg@8 >&2)
    touch "$dir/done"
fi
echo "$dir"
