#!/usr/bin/env bash
# Installs Debian's `prometheus` package (prometheus + promtool) if either binary is missing.
# tests/test_deploy.py needs both: promtool checks the config, prometheus scrapes the service in the
# integration test. Idempotent, so .ci/run can call it on every run.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# --no-install-recommends: the recommended node exporter and web assets are not needed for the checks.
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package's postinst may start a daemon on :9090 where an init system exists; the tests start their
# own instance on a free port, so that daemon is harmless, only wasted CPU.
prometheus --version | head -1
promtool --version | head -1
