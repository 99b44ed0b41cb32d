# Sourced: build_for NN builds the extension's release library for PostgreSQL NN (14-18) without
# that version's headers and prints its path, target/matrix/pgNN/release/libpg_token_cleanup.so.
# pgrx-pg-sys ships pregenerated bindings for every version (src/include/pgNN.rs); with DOCS_RS=1 its
# build script skips bindgen (which needs headers) and reads them from its OUT_DIR, so they are
# copied there; pgrx is built without its C shim (which needs headers too). Used by
# scripts/matrix.sh and scripts/citus.sh.

bindings=$(dirname "$(cargo metadata --format-version 1 | python3 -c \
    'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "pgrx-pg-sys"))')")/src/include

build_for() {
    local v=$1 target=$PWD/target/matrix/pg$1
    # A fresh clone has no target/matrix yet, and the build log lives beside the build directory.
    mkdir -p "$target"
    local build=(env DOCS_RS=1 CARGO_TARGET_DIR="$target" cargo build --lib --release
                 --no-default-features --features "pg$v")
    copy_bindings() {
        for out in "$target"/release/build/pgrx-pg-sys-*/out; do
            [ -d "$out" ] && cp "$bindings/pg$v.rs" "$bindings/pg${v}_oids.rs" "$out/"
        done
        return 0
    }
    copy_bindings
    if ! "${build[@]}" >"$target.log" 2>&1; then
        # First build: pgrx-pg-sys's OUT_DIR exists only now.
        copy_bindings
        "${build[@]}" >"$target.log" 2>&1 || { tail -30 "$target.log" >&2; return 1; }
    fi
    echo "$target/release/libpg_token_cleanup.so"
}
