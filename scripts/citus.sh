#!/usr/bin/env bash
# Builds Citus 13.2.2 (a test tool: AGPL-3.0, never linked into or shipped with the extension) into a
# private copy of Debian's PostgreSQL 15 under target/citus/pg15, with pg_token_cleanup installed
# there too, and prints the copy's bin directory (for PG_BIN). Cached: a second call only installs
# the extension again. Exits 3, saying so, when the Citus sources are not beside the repository
# (../shared/citus/), as on a fresh clone elsewhere.
#
# The private copy: PostgreSQL finds its lib and share directories relative to its binaries, so
# copying /usr/lib/postgresql/15, /usr/share/postgresql/15 and the headers gives an installation
# that Citus and the extension can be installed into without touching the system's.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg_env.sh

sources=${CITUS_SOURCES:-$PWD/../shared/citus}
tarball=$sources/citus-13.2.2-notests.tar.gz
patch=$sources/citus-13.2.2-pg15.20.patch
if [ ! -f "$tarball" ]; then
    echo "Citus sources not found in $sources: skipping the Citus build" >&2
    exit 3
fi

work=$PWD/target/citus
root=$work/pg15
bin=$root/usr/lib/postgresql/15/bin
log=$work/build.log
mkdir -p "$work"

if [ ! -f "$root/usr/lib/postgresql/15/lib/citus.so" ]; then
    # gssapi.h, and zstd.h: Debian's PostgreSQL is built with zstd, so its pg_config.h has
    # HAVE_LIBZSTD, and Citus's columnar storage includes zstd.h whatever configure was told.
    missing=()
    for pkg in libkrb5-dev libzstd-dev; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> apt-get install ${missing[*]} (for Citus's build)" >&2
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
    fi
    echo "==> a private copy of PostgreSQL 15 in $root" >&2
    rm -rf "$root" && mkdir -p "$root/usr/lib/postgresql" "$root/usr/share/postgresql" "$root/usr/include"
    cp -a /usr/lib/postgresql/15 "$root/usr/lib/postgresql/"
    cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
    cp -a /usr/include/postgresql "$root/usr/include/"
    rm -f "$root/usr/lib/postgresql/15/lib/pg_token_cleanup.so" "$root/usr/share/postgresql/15/extension/pg_token_cleanup"*
    echo "==> build Citus 13.2.2 (about 90 s; log: $log)" >&2
    rm -rf "$work/src" && mkdir -p "$work/src"
    tar -xzf "$tarball" -C "$work/src" --strip-components=1
    (
        cd "$work/src"
        patch -p0 src/include/pg_version_compat.h <"$patch"
        PG_CONFIG=$bin/pg_config ./configure --without-libcurl --without-lz4 --without-zstd
        make -j"$(nproc)" with_llvm=no
        make with_llvm=no install
    ) >"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
fi

# This working tree's extension, built for Debian's PostgreSQL 15, into the copy.
sharedir=$("$PG_CONFIG" --sharedir)
pkglibdir=$("$PG_CONFIG" --pkglibdir)
rm -rf "$work/pkg"
cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$work/pkg" >"$work/install.log" 2>&1 \
    || { tail -30 "$work/install.log" >&2; exit 1; }
cp "$work/pkg$pkglibdir/pg_token_cleanup.so" "$root$pkglibdir/"
cp "$work/pkg$sharedir/extension/"pg_token_cleanup* "$root$sharedir/extension/"
echo "$bin"
