# Sourced by every script that starts or builds against PostgreSQL: the one place that says which
# server they use. The end-to-end tests (tests/e2e/common/mod.rs) read the same variables with the same
# defaults.
#   PG_BIN      directory holding initdb, pg_ctl and postgres (and, when the installation has them,
#               pg_dump, pg_restore, pg_basebackup). Default: Debian's PostgreSQL 15.
#   PG_CONFIG   pg_config of the installation cargo pgrx builds against (Debian's PostgreSQL 15).
#   RESULTS_DIR where the end-to-end tests write their rows for docs/reliability.md, when set
#               (scripts/test.sh sets it for PostgreSQL 15); unset, they write nothing.
# When PG_BIN is set by the caller (scripts/matrix.sh does, for the npm registry's servers), its
# ../lib is put on LD_LIBRARY_PATH for the server programs: those builds carry their own libraries.
PG_DEFAULT_BIN=/usr/lib/postgresql/15/bin
export PG_BIN=${PG_BIN:-$PG_DEFAULT_BIN}
export PG_CONFIG=${PG_CONFIG:-$PG_DEFAULT_BIN/pg_config}
