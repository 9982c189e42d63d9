#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian/Ubuntu machine, then run them.
#   Debian packages: Python venv, gcc and Python's headers (the relay's pump), Docker engine, dig, dnsperf,
#                    dnsmasq, nginx (stream), wrk, busybox-static,
#                    PowerDNS (pdns-server + pdns-backend-sqlite3; the tests run their own pdns_server)
#                    chromium + chromium-driver (the status page's browser tests), libnss3-tools (certutil: NSS trust)
#   Services:        dockerd (started in the background when none answers)
#   Python:          a venv in .venv with the pinned dependencies (requirements.lock)
#   Checks:          ruff, mypy --strict on maculad/, then pytest (a run with no test fails)
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

log() { printf '\n=== %s\n' "$*"; }

PACKAGES=(python3 python3-venv python3-dev gcc libc6-dev docker.io bind9-dnsutils dnsperf dnsmasq-base nginx
          libnginx-mod-stream wrk busybox-static openssl iproute2 procps util-linux systemd ca-certificates
          pdns-server pdns-backend-sqlite3 sqlite3 chromium chromium-driver libnss3-tools)
missing=()
for p in "${PACKAGES[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  $SUDO sh -c 'nohup dockerd >/var/log/maculad-test-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not come up:"; tail -20 /var/log/maculad-test-dockerd.log; exit 1; }
fi

log "python environment"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c requirements.lock -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"

log "test image"
bash scripts/build-test-image.sh

log "ruff"
ruff check maculad tests benchmarks
log "mypy --strict maculad"
mypy maculad

log "pytest"
set +e
pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "no test ran: failing"; exit 1; fi
exit "$rc"
