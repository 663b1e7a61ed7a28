#!/usr/bin/env bash
# Installs Debian's `chromium` if it is missing: tests/test_browser.py drives it headless through Playwright
# (pip's `playwright`, from `make install`, which downloads no browser of its own). Idempotent, like
# deploy/install-prometheus.sh, so .ci/run can call it on every run.
set -euo pipefail

if command -v chromium >/dev/null; then
    exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# --no-install-recommends, plus one font family, so that screenshots show text: nothing else is needed headless.
$sudo apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
chromium --headless --version 2>/dev/null | head -1
