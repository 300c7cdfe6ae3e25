#!/usr/bin/env bash
# Installs LiteLLM (the proxy extra) into .test-tools/litellm-venv for the side-by-side benchmark.
# Pinned: 1.108.7 is what `litellm[proxy]` resolves to on the package index here (newer releases need a
# `litellm-proxy` package that is not published); see shared peer research. Override with LITELLM_VERSION.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LITELLM_VENV:-$ROOT/.test-tools/litellm-venv}"
VERSION="${LITELLM_VERSION:-1.108.7}"
if [[ -x "$VENV/bin/litellm" ]] && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '$VERSION')"; then
    echo "litellm $VERSION present in $VENV"; exit 0
fi
python3 -m venv "$VENV"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q --only-binary=:all: "litellm[proxy]==$VERSION"
echo "litellm $VERSION installed in $VENV"
