#!/usr/bin/env bash
# Main job: set up the environment if needed, then train (no arguments: the CPU default run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python train.py "$@"
