#!/usr/bin/env bash
# Creates .venv (once) and installs lit_sr with its dependencies. torch is pinned by
# constraints.txt to the CPU build; on a GPU machine install your CUDA torch first and set
# LIT_SR_NO_CONSTRAINTS=1. torchvision is never installed (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.lit_sr-installed
# litdata (data=shards) declares torchvision, which breaks lightning/peft/diffusers here: it is installed
# without dependencies; its real imports come with the "shards" extra (part of "test").
LITDATA="litdata==0.2.76"
want=$(cat pyproject.toml constraints.txt "$0" | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if [ "${LIT_SR_NO_CONSTRAINTS:-0}" = "1" ]; then
    .venv/bin/python -m pip install -q -e ".[test]"
  else
    .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  fi
  .venv/bin/python -m pip install -q --no-deps "$LITDATA"
  if .venv/bin/python -c "import torchvision" 2>/dev/null; then
    echo "error: torchvision is installed in .venv; it breaks lightning/peft/diffusers with this torch. Remove it: .venv/bin/pip uninstall -y torchvision" >&2
    exit 2
  fi
  echo "$want" > "$stamp"
fi
