#!/usr/bin/env bash
# Makes .venv with the project and its test tools; idempotent and quick when nothing changed.
# Usage: bash scripts/setup.sh [--browser]   (--browser also installs Debian's Chromium and Fashion-MNIST)
set -euo pipefail
cd "$(dirname "$0")/.."

want_system=0
[ "${1:-}" = "--browser" ] && want_system=1

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}
if [ "$want_system" = 1 ]; then
  missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  [ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
  # the engine's fused CPU kernels are compiled on first use (explorer/native)
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  "${PYTHON:-python3}" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
    || missing+=(python3-dev)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]} (Debian packages)"
    apt_install "${missing[@]}"
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project into .venv (torch takes a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e ".[test]"
  rm -f .venv/.installed-* && touch "$stamp"
fi
