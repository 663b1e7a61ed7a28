#!/usr/bin/env bash
# Debian's `prometheus` package (prometheus + promtool), if either is missing. tests/test_deploy.py needs both:
# promtool checks the config, prometheus scrapes the service in the integration test. The package's postinst
# may start a daemon on :9090 where an init system exists; the tests start their own on a free port.
set -euo pipefail
bash "$(dirname "$0")/install-debian.sh" "prometheus promtool" prometheus
prometheus --version | head -1
promtool --version | head -1
