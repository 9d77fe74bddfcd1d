"""Offline image annotation for TMG: tags → nouns → per-noun masks.

One file per concept: :mod:`~lit_sr.tagging.base` (the tagger interface), one file per tagger
(``ram``, ``clip``, ``file``), :mod:`~lit_sr.tagging.nouns` (WordNet noun filter) and
:mod:`~lit_sr.tagging.grounding` (Grounding DINO boxes + SAM-2 masks). The job that runs them
is :mod:`lit_sr.extract_masks`; its output, the mask cache, is the contract with training.
"""
from lit_sr.tagging.base import Tagger, normalize_tags

__all__ = ["Tagger", "normalize_tags"]
