#!/usr/bin/env bash
# Builds the Debian packages, one per PostgreSQL major version, laid out as PGDG's are:
#   target/postgresql-NN-pg-token-cleanup_<version>_amd64.deb
# with the library in /usr/lib/postgresql/NN/lib, the control file, the install script, the frozen
# install scripts of earlier versions and the upgrade scripts in /usr/share/postgresql/NN/extension,
# and Depends: postgresql-NN. The SQL is the same for every version (where the server differs, the
# scripts check server_version_num): it comes from `cargo pgrx package` against Debian's PostgreSQL
# 15 (release build). The library for 15 comes from there too; for 14, 16, 17 and 18 it is the
# release build scripts/build_for.sh makes from pgrx's pregenerated bindings (no headers needed).
#   bash scripts/package.sh             the package for 15; prints the path of the .deb
#   bash scripts/package.sh 14 16 17    those versions' packages; prints one path per line
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
source scripts/pg_env.sh
source scripts/build_for.sh

version=$(cargo metadata --no-deps --format-version 1 \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')

# What `cargo pgrx package` makes for Debian's PostgreSQL 15: the SQL for every version, and 15's library.
staged=target/package/pgrx
rm -rf "$staged"
cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$staged" >&2
staged_extension=$staged$("$PG_CONFIG" --sharedir)/extension
staged_library=$staged$("$PG_CONFIG" --pkglibdir)/pg_token_cleanup.so

package() {
    local major=$1
    local name=postgresql-$major-pg-token-cleanup
    local root=target/package/${name}_$version
    local deb=target/${name}_${version}_amd64.deb
    local library=$staged_library
    [ "$major" = 15 ] || library=$(build_for "$major")

    rm -rf "$root"
    mkdir -p "$root/usr/lib/postgresql/$major/lib" "$root/usr/share/postgresql/$major/extension"
    cp "$library" "$root/usr/lib/postgresql/$major/lib/pg_token_cleanup.so"
    cp "$staged_extension"/pg_token_cleanup* "$root/usr/share/postgresql/$major/extension/"
    # pgrx copies only the upgrade scripts (…--A--B.sql); the frozen install scripts of released
    # versions (…--A.sql) go in too, for CREATE EXTENSION … VERSION.
    for f in sql/pg_token_cleanup--*.sql; do
        cp "$f" "$root/usr/share/postgresql/$major/extension/"
    done

    # As Debian ships libraries: without debugging symbols.
    strip --strip-unneeded "$root/usr/lib/postgresql/$major/lib/pg_token_cleanup.so"

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
}

for major in ${*:-15}; do
    package "$major"
done
