#!/usr/bin/env bash
# The real CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz), offline, for the tokenizers of
# `python -m lit_sr.make_backbone` (random-weight SD-2.1 / SD-Turbo / Grounding DINO folders).
#
# The file ships inside the open-clip-torch wheel. That package depends on torchvision, which
# breaks lightning/peft/diffusers next to this torch, so it is never installed: pip downloads the
# wheel alone (--no-deps) and only this one file is extracted and checked against the published
# SHA-256. Result: $LIT_SR_CACHE/clip/bpe_simple_vocab_16e6.txt.gz (default ~/.cache/lit_sr),
# where lit_sr looks for it. Idempotent: nothing is downloaded when the file is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
VERSION=${OPEN_CLIP_VERSION:-3.3.0}
DEST=${LIT_SR_CACHE:-$HOME/.cache/lit_sr}/clip
FILE=bpe_simple_vocab_16e6.txt.gz
SHA256=924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a

if [ -f "$DEST/$FILE" ] && echo "$SHA256  $DEST/$FILE" | sha256sum -c --status; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "open-clip-torch==$VERSION"
mkdir -p "$DEST"
"$PY" - "$tmp" "$DEST/$FILE.tmp" <<'EOF'
import glob, sys, zipfile
wheel = glob.glob(f"{sys.argv[1]}/open_clip_torch-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz"))
EOF
if ! echo "$SHA256  $DEST/$FILE.tmp" | sha256sum -c --status; then
  rm -f "$DEST/$FILE.tmp"
  echo "error: $FILE from open-clip-torch==$VERSION does not match the published SHA-256" >&2
  exit 2
fi
mv "$DEST/$FILE.tmp" "$DEST/$FILE"
echo "setup_clip_vocab: CLIP BPE vocabulary in $DEST/$FILE" >&2
