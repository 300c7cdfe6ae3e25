#!/usr/bin/env bash
# Runs the Codex end-to-end tests (tests/routing_codex.rs, e2e_codex.rs, identity_codex.rs, websocket_codex.rs,
# long_session_codex.rs, people_codex.rs) against one
# Codex CLI version, installing it first if it is missing:
#
#   scripts/codex-e2e.sh                 # the default pin (tests/support/mod.rs CODEX_VERSIONS[0])
#   scripts/codex-e2e.sh 0.172.0         # any published version
#   scripts/codex-e2e.sh 0.169.0 lite    # extra arguments go to the test runner (a name filter here)
#
# Without a version every test runs on the default pin and the key turns also on the previous pin, as in
# scripts/test.sh; with one, everything runs on that version only (TOLLGATE_CODEX_VERSION). Record what
# was proven in docs/codex.md. Needs the other test peers too (scripts/install-test-tools.sh installs them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec </dev/null

if [[ $# -gt 0 && "$1" != -* ]]; then
    VERSION="$1"
    shift
    bash scripts/install-test-tools.sh --codex "$VERSION"
    export TOLLGATE_CODEX_VERSION="$VERSION"
else
    bash scripts/install-test-tools.sh
fi
cargo build --locked -p tollgate-broker -p tollgate-token --bins
TESTS=(--test routing_codex --test e2e_codex --test identity_codex --test websocket_codex --test long_session_codex --test people_codex)
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked -p tollgate "${TESTS[@]}" --no-fail-fast "$@"
else
    cargo test --locked -p tollgate "${TESTS[@]}" --no-fail-fast "$@"
fi
