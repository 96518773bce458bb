#!/usr/bin/env bash
# Makes .venv with the project and its test tools, and builds the engine's fused CPU kernels;
# idempotent and quick when nothing changed.
# Usage: bash scripts/setup.sh [--browser]   (--browser also installs Debian's Chromium, Node.js and Fashion-MNIST)
set -euo pipefail
cd "$(dirname "$0")/.."

want_browser=0
[ "${1:-}" = "--browser" ] && want_browser=1
PY=${PYTHON:-python3}

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# The fused CPU kernels (explorer/native) need a C++ compiler and Python's headers. Without
# them the engine runs its eager tensor code, so a failed install does not stop the set-up.
compiler=()
command -v g++ >/dev/null 2>&1 || compiler+=(g++)
"$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
  || compiler+=(python3-dev)
if [ "${#compiler[@]}" -gt 0 ]; then
  echo "setup: installing ${compiler[*]} (Debian packages) for the fused CPU kernels"
  apt_install "${compiler[@]}" || echo "setup: could not install ${compiler[*]}; the engine will use its eager tensor code"
fi
if [ "$want_browser" = 1 ]; then
  missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  [ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)   # tests run the page's scripts in node
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]} (Debian packages)"
    apt_install "${missing[@]}"
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.installed-$(sha1sum < pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project into .venv (torch takes a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e ".[test]"
  rm -f .venv/.installed-* && touch "$stamp"
fi

# Build the kernels now (about 30-60 s once per machine; a second or two when already built), so
# that neither the first page nor the first test waits on a compiler. It says which it did;
# where it cannot build them, it says why and the set-up goes on.
.venv/bin/python -m explorer.native --build || echo "setup: going on without the fused CPU kernels"
