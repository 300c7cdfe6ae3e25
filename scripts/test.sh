#!/usr/bin/env bash
# The whole test suite, from a fresh clone: starts the local services the tests talk to (PostgreSQL, Redis),
# installs the pinned test peers (Codex CLI, OpenAI SDK, OpenBao, moto) into .test-tools/, builds every
# binary, and runs every test. Non-interactive; safe to re-run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec </dev/null

say() { printf '==> %s\n' "$*"; }

# --- services (the machine image ships them; start them if they are down) --------------------------
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if command -v redis-cli >/dev/null && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    say "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi

# --- pinned test peers ------------------------------------------------------------------------------
say "installing pinned test tools (if missing)"
bash scripts/install-test-tools.sh

# --- habits: formatting and lints (what review would ask for, checked before anything runs) --------
say "checking formatting (cargo fmt --check)"
cargo fmt --all -- --check
say "linting (cargo clippy -D warnings)"
cargo clippy --locked --workspace --all-targets -- -D warnings

# --- build and test ---------------------------------------------------------------------------------
say "building all binaries"
cargo build --locked --workspace --bins
say "running the test suite"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --workspace --no-fail-fast "$@"
    # nextest does not run doctests.
    cargo test --locked --workspace --doc
else
    cargo test --locked --workspace --no-fail-fast "$@"
fi
