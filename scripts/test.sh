#!/usr/bin/env bash
# The test command: sets up everything the tests need (venv, the fused CPU kernels, Chromium,
# Fashion-MNIST), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
mkdir -p test-artifacts
exec .venv/bin/python -m pytest "$@"
