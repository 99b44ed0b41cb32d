#!/usr/bin/env bash
# The upgrade test (tests/upgrade.rs): a database created at the released 0.1.0, with rules of a
# superuser and of an ordinary role and their run history, updated with ALTER EXTENSION … UPDATE to
# this version, then checked (rules, owners, history and statistics kept, scheduler serving again,
# schema equal to a fresh install).
#
# - 0.1.0 is built from its git commit in a work tree of its own (target/upgrade/v0.1.0/src, with
#   its own target directory, kept between runs), and its generated install script must equal the
#   frozen sql/pg_token_cleanup--0.1.0.sql.
# - This version is what scripts/package.sh packages.
# - Both are installed into a copy of Debian's PostgreSQL 15 (target/upgrade/pg15: PostgreSQL finds
#   its share and lib directories relative to its binaries), so the system's installation is left
#   alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/pg_env.sh

FROM_VERSION=0.1.0
FROM_COMMIT=4cfab5d # the released 0.1.0
work=$PWD/target/upgrade
from=$work/v$FROM_VERSION
sharedir=$("$PG_CONFIG" --sharedir)

git cat-file -e "$FROM_COMMIT^{commit}" 2>/dev/null || {
    echo "commit $FROM_COMMIT (release $FROM_VERSION) is not in this clone: the upgrade test builds it from git" >&2
    exit 1
}
if [ "$(cat "$from/commit" 2>/dev/null)" != "$(git rev-parse "$FROM_COMMIT")" ]; then
    rm -rf "$from/src" && mkdir -p "$from/src"
    git archive "$FROM_COMMIT" | tar -x -C "$from/src"
    git rev-parse "$FROM_COMMIT" >"$from/commit"
fi
echo "==> build $FROM_VERSION from $FROM_COMMIT"
rm -rf "$from/pkg"
(cd "$from/src" && CARGO_TARGET_DIR="$from/target" cargo pgrx package --debug \
    --pg-config "$PG_CONFIG" --out-dir "$from/pkg" >"$from/build.log" 2>&1) \
    || { tail -30 "$from/build.log"; exit 1; }
diff -u "sql/pg_token_cleanup--$FROM_VERSION.sql" "$from/pkg$sharedir/extension/pg_token_cleanup--$FROM_VERSION.sql" \
    || { echo "sql/pg_token_cleanup--$FROM_VERSION.sql is not what $FROM_COMMIT generates" >&2; exit 1; }

echo "==> package this version"
deb=$(bash scripts/package.sh)
# The package's tree: target/package/<package>_<version>, as package.sh builds it beside the .deb.
to=$PWD/target/package/$(basename "$deb" _amd64.deb)

echo "==> a copy of PostgreSQL 15 in $work/pg15"
rm -rf "$work/pg15" && mkdir -p "$work/pg15/usr/lib/postgresql" "$work/pg15/usr/share/postgresql"
bindir=$("$PG_CONFIG" --bindir)
cp -a "$(dirname "$bindir")" "$work/pg15/usr/lib/postgresql/"
cp -a "$sharedir" "$work/pg15/usr/share/postgresql/"
rm -f "$work/pg15/usr/lib/postgresql/15/lib/pg_token_cleanup.so" "$work/pg15$sharedir/extension/pg_token_cleanup"*

echo "==> tests/upgrade.rs"
PG_BIN=$work/pg15$bindir UPGRADE_TREE=$work/pg15 UPGRADE_FROM=$from/pkg UPGRADE_TO=$to \
    UPGRADE_FROM_VERSION=$FROM_VERSION cargo test --test upgrade -- --ignored --nocapture
