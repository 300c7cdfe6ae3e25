#!/usr/bin/env bash
# Installs Portkey's AI gateway (npm @portkey-ai/gateway) into .test-tools/portkey for the side-by-side
# benchmark (bench/run.sh portkey). Pinned; override with PORTKEY_VERSION. Not part of the CI suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${PORTKEY_DIR:-$ROOT/.test-tools/portkey}"
VERSION="${PORTKEY_VERSION:-1.15.2}"
PKG="$DIR/node_modules/@portkey-ai/gateway/package.json"
if [[ -f "$PKG" ]] && [[ "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$PKG")" == "$VERSION" ]]; then
    echo "@portkey-ai/gateway $VERSION present in $DIR"; exit 0
fi
command -v npm >/dev/null || { echo "npm not found: install Node.js >= 18 (apt-get install nodejs npm)" >&2; exit 1; }
mkdir -p "$DIR"
npm install --prefix "$DIR" --save-exact --no-audit --no-fund --loglevel=error "@portkey-ai/gateway@$VERSION" >&2
echo "@portkey-ai/gateway $VERSION installed in $DIR"
