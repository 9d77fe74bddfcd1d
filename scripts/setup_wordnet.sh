#!/usr/bin/env bash
# WordNet 3.0 for nltk (the TMG noun filter), offline.
#
# nltk cannot download its data here, but Debian ships the WordNet 3.0 database
# (packages wordnet-base + wordnet-sense-index, files in /usr/share/wordnet). nltk reads it
# only from <NLTK_DATA>/corpora/wordnet/ and also needs a `lexnames` file that Debian does not
# ship; this script copies the Debian files there and writes `lexnames` (the 45 lexicographer
# file names, numbers and syntactic categories documented in WordNet's lexnames(5WN)).
#
# Result: <repo>/.cache/nltk_data/corpora/wordnet (or under $NLTK_DATA when it is set).
# lit_sr looks in $NLTK_DATA first, then in <repo>/.cache/nltk_data. Idempotent; apt-get runs
# only when the Debian files are missing (it needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

SRC=${WORDNET_DIR:-/usr/share/wordnet}
DEST_ROOT=${NLTK_DATA:-$PWD/.cache/nltk_data}
DEST=$DEST_ROOT/corpora/wordnet
FILES=(adj.exc adv.exc noun.exc verb.exc data.adj data.adv data.noun data.verb
       index.adj index.adv index.noun index.verb index.sense cntlist.rev)

missing=0
for f in "${FILES[@]}"; do
  [ -f "$SRC/$f" ] || missing=1
done
if [ "$missing" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: WordNet files missing in $SRC; run as root or: sudo apt-get install -y wordnet-base wordnet-sense-index" >&2
    exit 2
  fi
  echo "setup_wordnet: installing wordnet-base wordnet-sense-index" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends wordnet-base wordnet-sense-index >/dev/null
fi

umask 022
mkdir -p "$DEST"
for f in "${FILES[@]}"; do
  # Plain private copies (36 MB): nltk refuses symlinks that leave its data root, hard-linked
  # files (st_nlink > 1) and group/world-writable files. Copied again only when needed.
  if [ -L "$DEST/$f" ] || [ ! -f "$DEST/$f" ] || [ "$(stat -c %h "$DEST/$f")" != 1 ] \
      || ! cmp -s "$SRC/$f" "$DEST/$f"; then
    rm -f "$DEST/$f"
    cp "$SRC/$f" "$DEST/$f.tmp" && mv "$DEST/$f.tmp" "$DEST/$f"
  fi
done

# lexnames: number <TAB> name <TAB> syntactic category (1 noun, 2 verb, 3 adjective, 4 adverb).
i=0
: > "$DEST/lexnames.tmp"
for entry in adj.all:3 adj.pert:3 adv.all:4 noun.Tops:1 noun.act:1 noun.animal:1 noun.artifact:1 \
    noun.attribute:1 noun.body:1 noun.cognition:1 noun.communication:1 noun.event:1 noun.feeling:1 \
    noun.food:1 noun.group:1 noun.location:1 noun.motive:1 noun.object:1 noun.person:1 \
    noun.phenomenon:1 noun.plant:1 noun.possession:1 noun.process:1 noun.quantity:1 noun.relation:1 \
    noun.shape:1 noun.state:1 noun.substance:1 noun.time:1 verb.body:2 verb.change:2 verb.cognition:2 \
    verb.communication:2 verb.competition:2 verb.consumption:2 verb.contact:2 verb.creation:2 \
    verb.emotion:2 verb.motion:2 verb.perception:2 verb.possession:2 verb.social:2 verb.stative:2 \
    verb.weather:2 adj.ppl:3; do
  printf '%02d\t%s\t%s\n' "$i" "${entry%:*}" "${entry##*:}" >> "$DEST/lexnames.tmp"
  i=$((i + 1))
done
mv "$DEST/lexnames.tmp" "$DEST/lexnames"
chmod go-w "$DEST_ROOT" "$DEST_ROOT/corpora" "$DEST" "$DEST"/*
echo "setup_wordnet: WordNet ready for nltk in $DEST_ROOT" >&2
