#!/usr/bin/env bash
# Stoplight's Spectral CLI, pinned, from npm into .tools/spectral (git-ignored), if missing:
# tests/test_openapi_clients.py lints the app's /openapi.json with it against .spectral.yaml
# (set LATENT_CNF_SPECTRAL=required to make that test fail rather than skip without it). Needs node >= 18 and npm.
set -euo pipefail
VERSION=6.16.3
cd "$(dirname "$0")/.."
bash deploy/install-debian.sh "node npm" nodejs npm  # machines without node: Debian's
PREFIX=.tools/spectral
BIN="$PREFIX/node_modules/.bin/spectral"
if [[ ! -x "$BIN" ]] || [[ "$("$BIN" --version 2>/dev/null)" != "$VERSION" ]]; then
    mkdir -p "$PREFIX"
    npm install --prefix "$PREFIX" --no-save --no-audit --no-fund --loglevel=error "@stoplight/spectral-cli@$VERSION"
fi
"$BIN" --version
