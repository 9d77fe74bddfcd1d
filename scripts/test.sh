#!/usr/bin/env bash
# Tests: set up the environment if needed, then run the whole offline test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export LIT_SR_CACHE="${LIT_SR_CACHE:-$PWD/.cache/lit_sr}"  # where tests/conftest.py looks too
bash scripts/setup.sh
bash scripts/setup_wordnet.sh   # WordNet for the TMG noun filter (from Debian packages)
bash scripts/setup_clip_vocab.sh  # the CLIP BPE table for real-size random models (tests/test_real_size.py)
bash scripts/setup_browser.sh   # Debian chromium for the studio page tests (tests/test_studio_page.py)
exec .venv/bin/python -m pytest -q "$@"
