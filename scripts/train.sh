#!/usr/bin/env bash
# Main job: set up the environment if needed, then train (no arguments: the CPU default run, followed
# by its held-out check against bicubic in runs/default/heldout; see README "What the CPU default does").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -eq 0 ]; then
  .venv/bin/python train.py
  exec .venv/bin/python -m lit_sr.heldout --model runs/default/adapter --out runs/default/heldout --knobs 50 100 200
fi
exec .venv/bin/python train.py "$@"
