#!/usr/bin/env bash
# Main job: set up the environment if needed, then train (no arguments: the CPU default run, followed
# by its held-out check against bicubic in runs/default/heldout; see README "What the CPU default does").
# Each phase prints its wall time, so a slow machine shows where the time goes.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
phase() { echo "[train.sh] $1: $(( SECONDS - mark )) s (total $(( SECONDS - start )) s)"; mark=$SECONDS; }
mark=$SECONDS
bash scripts/setup.sh
phase "set-up"
if [ "$#" -eq 0 ]; then
  .venv/bin/python train.py
  phase "training (240 steps, validation and curves)"
  .venv/bin/python -m lit_sr.heldout --model runs/default/adapter --out runs/default/heldout --knobs 50 100 200
  phase "held-out check"
  exit 0
fi
exec .venv/bin/python train.py "$@"
