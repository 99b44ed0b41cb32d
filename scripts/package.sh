#!/usr/bin/env bash
# Builds the Debian package for PostgreSQL 15:
#   target/postgresql-15-pg-token-cleanup_<version>_amd64.deb
# from `cargo pgrx package` (release build: the library, the control file and the install script
# pgrx generates), plus the frozen install scripts of earlier versions and the upgrade scripts in sql/
# (pgrx copies the upgrade scripts itself). Debian's naming and layout for PostgreSQL extensions:
# /usr/lib/postgresql/15/lib, /usr/share/postgresql/15/extension; Depends: postgresql-15.
# Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
source scripts/pg_env.sh

version=$(cargo metadata --no-deps --format-version 1 \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')
major=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
name=postgresql-$major-pg-token-cleanup
root=target/package/${name}_$version
deb=target/${name}_${version}_amd64.deb

rm -rf "$root"
cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$root" >&2
# pgrx copies only the upgrade scripts (…--A--B.sql); the frozen install scripts of released
# versions (…--A.sql) go in too, for CREATE EXTENSION … VERSION.
for f in sql/pg_token_cleanup--*.sql; do
    cp "$f" "$root$("$PG_CONFIG" --sharedir)/extension/"
done

# As Debian ships libraries: without debugging symbols.
strip --strip-unneeded "$root$("$PG_CONFIG" --pkglibdir)/pg_token_cleanup.so"

mkdir -p "$root/DEBIAN"
cat >"$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: amd64
Maintainer: pg_token_cleanup developers <pg-token-cleanup@users.noreply.github.com>
Depends: postgresql-$major, libc6
Section: database
Priority: optional
Installed-Size: $(du -sk "$root/usr" | cut -f1)
Homepage: https://github.com/pg-token-cleanup/pg_token_cleanup
Description: PostgreSQL $major extension purging expired and revoked tokens on schedule
 pg_token_cleanup runs cleanup rules (table, condition, cron schedule) from a background worker
 inside PostgreSQL: batched deletes with the privileges of each rule's owner, exactly once per
 cluster. Add pg_token_cleanup to shared_preload_libraries, restart, CREATE EXTENSION.
CONTROL
chmod -R u=rwX,go=rX "$root"
dpkg-deb --root-owner-group --build "$root" "$deb" >&2
echo "$deb"
