#!/usr/bin/env bash
# Installs Debian packages unless the commands they provide are already there; idempotent, so .ci/run can call
# it on every run. Usage: install-debian.sh "command ..." package ...
# --no-install-recommends: only what the checks need (no node exporter with prometheus, no extras with chromium).
set -euo pipefail
commands=$1
shift
missing=0
for command in $commands; do
    command -v "$command" >/dev/null || missing=1
done
if [ "$missing" = 0 ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
