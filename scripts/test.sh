#!/usr/bin/env bash
# Tests: set up the environment if needed, then run the whole offline test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_wordnet.sh   # WordNet for the TMG noun filter (from Debian packages)
exec .venv/bin/python -m pytest -q "$@"
