#!/usr/bin/env bash
# Installs what building and testing pg_token_cleanup needs on a fresh Debian bookworm machine (as
# root, with Rust 1.95): PostgreSQL 15 server headers, clang, sudo, Prometheus and
# prometheus-sql-exporter (the monitoring test starts its own, on free ports), cargo-pgrx 0.18.1, and
# pgrx's configuration for the system PostgreSQL 15. Idempotent: skips whatever is already there.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/pg_env.sh"

missing=()
for pkg in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo prometheus prometheus-sql-exporter; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "0.18.1"; then
    echo "==> cargo install cargo-pgrx 0.18.1 (about 7 minutes)"
    cargo install cargo-pgrx --version 0.18.1 --locked
fi

if ! grep -qs "^pg15 = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    echo "==> cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG"
fi
