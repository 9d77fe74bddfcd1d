#!/usr/bin/env bash
# Headless Chromium for the studio page's browser tests (tests/test_studio_page.py).
#
# Playwright drives the browser but cannot download its own here, so the tests launch Debian's
# `chromium` (/usr/bin/chromium). This installs that package when it is missing and nothing else;
# playwright itself comes with the project's test dependencies. Idempotent; apt-get needs root.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
  echo "setup_browser: $CHROMIUM present" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "error: $CHROMIUM missing; run as root or: sudo apt-get install -y chromium" >&2
  exit 2
fi
echo "setup_browser: installing chromium" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq chromium >/dev/null
echo "setup_browser: $("$CHROMIUM" --version 2>/dev/null)" >&2
