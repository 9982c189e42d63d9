#!/usr/bin/env bash
# Install maculad into .venv (once) and run it in the foreground on a configuration that needs no root:
# DNS on 127.0.0.153:10053, the relay on ports 10080/10443, metrics on 127.0.0.1:9469.
# Docker and a cluster are optional: DNS and the static routes work without them.
#   dig -p 10053 @127.0.0.153 grafana.macula.local
#   curl http://127.0.0.1:9469/metrics
#   maculactl status
# Pass another config with: scripts/run.sh --config PATH
#
# pip runs only when .venv is missing or pyproject.toml / setup.py / requirements.lock changed since the last
# install (their checksum is kept in .venv/.maculad-installed), so once installed it starts with no
# network. maculactl is linked into ~/.local/bin (MACULAD_BIN_DIR overrides the directory).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
stamp=.venv/.maculad-installed
want="$(cat pyproject.toml setup.py requirements.lock | sha256sum | cut -d' ' -f1)"
if [ -x .venv/bin/python ] && [ -x .venv/bin/maculad ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "run.sh: maculad is already installed in .venv (pyproject.toml, setup.py and requirements.lock unchanged)"
else
  # Python 3.11+ with venv; on Linux a C compiler and Python's headers for the relay's pump (maculad/proxy/_pump.c)
  need=()
  python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null || need+=(python3 python3-venv)
  if [ "$(uname -s)" = Linux ]; then
    command -v gcc >/dev/null || need+=(gcc libc6-dev)
    python3 -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
      2>/dev/null || need+=(python3-dev)
  fi
  if [ ${#need[@]} -gt 0 ]; then
    echo "run.sh: installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  echo "run.sh: installing maculad into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -c requirements.lock -e .
  echo "$want" > "$stamp"
fi

# bytecode for every module now, not at each start: where Python may not write it (PYTHONDONTWRITEBYTECODE,
# a checkout the service cannot write) every start would compile the sources again (~50 ms of start-up)
.venv/bin/python -m compileall -q maculad

# maculactl where the shell finds it: a link in ~/.local/bin (never over a file that is not a link)
bin_dir="${MACULAD_BIN_DIR:-$HOME/.local/bin}"
ctl="$PWD/.venv/bin/maculactl"
if [ -e "$bin_dir/maculactl" ] && [ ! -L "$bin_dir/maculactl" ]; then
  echo "run.sh: $bin_dir/maculactl exists and is not a link; leaving it: run $ctl"
elif [ "$(readlink "$bin_dir/maculactl" 2>/dev/null)" != "$ctl" ]; then
  mkdir -p "$bin_dir" && ln -sfn "$ctl" "$bin_dir/maculactl"
  echo "run.sh: linked $bin_dir/maculactl -> $ctl"
fi
case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *) echo "run.sh: $bin_dir is not on your PATH; add it: export PATH=\"$bin_dir:\$PATH\"" ;;
esac
echo "run.sh: under sudo use the full path: sudo $ctl ..."

config="config/maculad-user.toml"
if [ "${1:-}" = "--config" ] && [ -n "${2:-}" ]; then config="$2"; fi
exec .venv/bin/maculad run --config "$config"
