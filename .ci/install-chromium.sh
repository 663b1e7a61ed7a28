#!/usr/bin/env bash
# Debian's `chromium`, if missing: tests/test_browser.py drives it headless through Playwright (pip's
# `playwright`, from `make install`, which downloads no browser of its own). One font family, so that
# screenshots show text.
set -euo pipefail
bash "$(dirname "$0")/../deploy/install-debian.sh" chromium chromium fonts-liberation
chromium --headless --version 2>/dev/null | head -1
