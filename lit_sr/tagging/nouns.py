"""Keep the tags that name things: a WordNet noun filter.

Rules (tags are lower-case words or phrases):

* a tag WordNet knows that has **no noun sense** is dropped (adjectives such as ``wooden``,
  verbs such as ``eat``);
* a multi-word tag is judged by its **head word** (the last word: ``running shoe`` → ``shoe``),
  not as a whole: WordNet's compounds are sparse and sometimes odd (``cell_phone`` is a verb only);
* a tag WordNet does not know is **kept** (new compounds, brand names: the tagger saw something);
* tags in ``drop`` (abstract nouns that never have a region: ``background``, ``photo``, colour
  names, ...) are dropped; their head word counts too (``blue sky`` is kept, ``sky blue`` is not);
* optionally, ``min_noun_share > 0`` also drops words whose noun senses carry less than that
  share of WordNet's tagged-sense frequency (``black``: 6 % noun, ``stand``: 5 %).

WordNet comes from Debian's ``wordnet-base`` + ``wordnet-sense-index`` (nltk cannot download
here); ``scripts/setup_wordnet.sh`` arranges it under ``<repo>/.cache/nltk_data``.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from lit_sr.errors import LitSRError

REPO_ROOT = Path(__file__).resolve().parents[2]

# Nouns that name no region a mask could cover (photo meta-words, layout, colours, qualities).
DEFAULT_DROP = (
    "background", "foreground", "image", "photo", "photograph", "picture", "view", "scene", "shot",
    "close-up", "closeup", "color", "colour", "pattern", "texture", "design", "style", "shape", "lighting",
    "shadow", "darkness", "day", "night", "daytime", "nighttime", "top", "bottom", "side", "front",
    "back", "middle", "center", "centre", "corner", "edge", "area", "part", "detail", "object", "thing",
    "stuff", "white", "black", "red", "green", "blue", "yellow", "pink", "purple", "brown",
    "gray", "grey", "beige", "stand", "sit", "walk", "smile",
)


class WordNetMissingError(LitSRError):
    """The WordNet files nltk needs are not where lit_sr looks."""


def wordnet_roots(extra: str | os.PathLike | None = None) -> list[Path]:
    """NLTK data roots searched for ``corpora/wordnet``, in order."""
    roots: list[Path] = []
    if extra:
        roots.append(Path(extra))
    roots += [Path(p) for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    roots.append(REPO_ROOT / ".cache" / "nltk_data")
    try:
        import nltk

        roots += [Path(p) for p in nltk.data.path]
    except ImportError:
        pass
    return roots


@lru_cache(maxsize=4)
def load_wordnet(root: str | None = None):
    """An nltk ``WordNetCorpusReader`` over the first root holding a complete WordNet."""
    import nltk
    from nltk.corpus.reader import CorpusReader
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    searched = wordnet_roots(root)
    for base in searched:
        folder = base / "corpora" / "wordnet"
        if (folder / "lexnames").is_file() and (folder / "index.noun").is_file():
            # The multilingual data stays lazy (never loaded); passing None would warn on every load.
            if str(base) not in nltk.data.path:
                nltk.data.path.append(str(base))  # nltk reads only below its authorised data roots
            omw = LazyCorpusLoader("omw-1.4", CorpusReader, r".*/wn-data-.*\.tab", encoding="utf8")
            try:
                return WordNetCorpusReader(str(folder), omw)
            except (OSError, ValueError, PermissionError) as exc:
                raise WordNetMissingError(f"WordNet in {folder} is unreadable ({exc}); re-run scripts/setup_wordnet.sh") from exc
    where = ", ".join(str(p) for p in dict.fromkeys(searched))
    raise WordNetMissingError(f"WordNet for nltk not found (looked in {where}); run scripts/setup_wordnet.sh "
                              "(installs Debian wordnet-base + wordnet-sense-index into .cache/nltk_data)")


class NounFilter:
    """Callable: tags → the tags that are (or end in) nouns; see the module docstring."""

    def __init__(self, drop: list[str] | None = None, min_noun_share: float = 0.0, wordnet_root: str | None = None
                 ) -> None:
        if not 0.0 <= min_noun_share <= 1.0:
            raise ValueError(f"min_noun_share must be in [0, 1], got {min_noun_share}")
        self.drop = {d.strip().lower() for d in (DEFAULT_DROP if drop is None else drop)}
        self.min_noun_share = float(min_noun_share)
        self.wordnet_root = wordnet_root
        self._wn = None

    @property
    def wordnet(self):
        if self._wn is None:
            self._wn = load_wordnet(self.wordnet_root)
        return self._wn

    def _senses(self, word: str) -> dict[str, int] | None:
        """Tagged-sense counts by part of speech ('n' or 'other'), or None when WordNet lacks the word."""
        synsets = self.wordnet.synsets(word)
        if not synsets:
            return None
        counts = {"n": 0, "other": 0, "n_senses": 0}
        for s in synsets:
            pos = "n" if s.pos() == "n" else "other"
            counts["n_senses"] += pos == "n"
            # +1 so that a sense without tagged-corpus counts still weighs something.
            counts[pos] += 1 + sum(l.count() for l in s.lemmas() if l.name().lower() == word)
        return counts

    def is_noun(self, tag: str) -> bool:
        tag = " ".join(tag.lower().replace("_", " ").split())
        if not tag:
            return False
        if tag in self.drop:
            return False
        senses = self._senses(tag.split(" ")[-1])
        if senses is None:
            return True  # unknown to WordNet: trust the tagger
        if senses["n_senses"] == 0:
            return False
        if self.min_noun_share > 0:
            share = senses["n"] / max(1, senses["n"] + senses["other"])
            return share >= self.min_noun_share
        return True

    def __call__(self, tags: list[str]) -> list[str]:
        return [t for t in tags if self.is_noun(t)]
