#!/usr/bin/env bash
# Install maculad into .venv and run it in the foreground on a configuration that needs no root:
# DNS on 127.0.0.153:10053, the relay on ports 10080/10443, metrics on 127.0.0.1:9469.
# Docker and a cluster are optional: DNS and the static routes work without them.
#   dig -p 10053 @127.0.0.153 grafana.macula.local
#   curl http://127.0.0.1:9469/metrics
# Pass another config with: scripts/run.sh --config PATH
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c requirements.lock -e .
config="config/maculad-user.toml"
if [ "${1:-}" = "--config" ] && [ -n "${2:-}" ]; then config="$2"; fi
exec .venv/bin/maculad run --config "$config"
