#!/usr/bin/env bash
# The upgrade test (tests/e2e/upgrade.rs), once from each released version (0.1.0 to 0.7.0): a database
# created at that version, with rules of a superuser and of an ordinary role and their run history,
# updated with ALTER EXTENSION … UPDATE to this version (through every upgrade script in between),
# then checked (rules, owners, history and statistics kept, scheduler serving again, schema equal to
# a fresh install).
#
# - Each release is built from its git commit in a work tree of its own (target/upgrade/vX.Y.Z/src,
#   with its own target directory, kept between runs), and its generated install script must equal
#   the frozen sql/pg_token_cleanup--X.Y.Z.sql.
# - This version is what scripts/package.sh packages.
# - Both are installed into a copy of Debian's PostgreSQL 15 (target/upgrade/pg15: PostgreSQL finds
#   its share and lib directories relative to its binaries), so the system's installation is left
#   alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/pg_env.sh

# Each released version, and the commit it was released from.
RELEASES="0.1.0:4cfab5d 0.2.0:1ac53a8 0.3.0:a4db48a 0.4.0:b1dd0c5 0.5.0:b9501ca 0.6.0:bb832b1 0.7.0:2241fab"
work=$PWD/target/upgrade
sharedir=$("$PG_CONFIG" --sharedir)
bindir=$("$PG_CONFIG" --bindir)

# Builds release $1 from commit $2 into $work/v$1/pkg, and checks its frozen install script.
build_release() {
    local version=$1 commit=$2 from=$work/v$1
    git cat-file -e "$commit^{commit}" 2>/dev/null || {
        echo "commit $commit (release $version) is not in this clone: the upgrade test builds it from git" >&2
        exit 1
    }
    if [ "$(cat "$from/commit" 2>/dev/null)" != "$(git rev-parse "$commit")" ]; then
        rm -rf "$from/src" && mkdir -p "$from/src"
        git archive "$commit" | tar -x -C "$from/src"
        git rev-parse "$commit" >"$from/commit"
    fi
    echo "==> build $version from $commit"
    rm -rf "$from/pkg"
    (cd "$from/src" && CARGO_TARGET_DIR="$from/target" cargo pgrx package --debug \
        --pg-config "$PG_CONFIG" --out-dir "$from/pkg" >"$from/build.log" 2>&1) \
        || { tail -30 "$from/build.log"; exit 1; }
    diff -u "sql/pg_token_cleanup--$version.sql" "$from/pkg$sharedir/extension/pg_token_cleanup--$version.sql" \
        || { echo "sql/pg_token_cleanup--$version.sql is not what $commit generates" >&2; exit 1; }
}

# A copy of PostgreSQL 15 without pg_token_cleanup, fresh for each test.
copy_postgres() {
    rm -rf "$work/pg15" && mkdir -p "$work/pg15/usr/lib/postgresql" "$work/pg15/usr/share/postgresql"
    cp -a "$(dirname "$bindir")" "$work/pg15/usr/lib/postgresql/"
    cp -a "$sharedir" "$work/pg15/usr/share/postgresql/"
    rm -f "$work/pg15/usr/lib/postgresql/15/lib/pg_token_cleanup.so" "$work/pg15$sharedir/extension/pg_token_cleanup"*
}

for release in $RELEASES; do
    build_release "${release%%:*}" "${release##*:}"
done

echo "==> package this version"
deb=$(bash scripts/package.sh)
# The package's tree: target/package/<package>_<version>, as package.sh builds it beside the .deb.
to=$PWD/target/package/$(basename "$deb" _amd64.deb)

for release in $RELEASES; do
    version=${release%%:*}
    echo "==> tests/e2e/upgrade.rs from $version, in a copy of PostgreSQL 15 in $work/pg15"
    copy_postgres
    PG_BIN=$work/pg15$bindir UPGRADE_TREE=$work/pg15 UPGRADE_FROM=$work/v$version/pkg UPGRADE_TO=$to \
        UPGRADE_FROM_VERSION=$version cargo test --test e2e -- upgrade:: --ignored --nocapture
done
