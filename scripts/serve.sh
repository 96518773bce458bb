#!/usr/bin/env bash
# Serves the explorer on its embedded default (no data set, no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/panel serve app.py --setup explorer/app/warm.py --check-unused-sessions 1000 --unused-session-lifetime 10000 "$@"
