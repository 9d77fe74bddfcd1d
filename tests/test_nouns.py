"""WordNet noun filter: adjectives/verbs dropped, nouns and unknown words kept, abstract nouns dropped.

WordNet comes from Debian (scripts/setup_wordnet.sh, which scripts/test.sh runs); a missing
WordNet fails these tests with the one-line fix rather than skipping them.
"""
from __future__ import annotations

import pytest

from lit_sr.tagging import nouns as nouns_mod
from lit_sr.tagging.base import normalize_tags
from lit_sr.tagging.clip import read_vocabulary
from lit_sr.tagging.nouns import DEFAULT_DROP, NounFilter, WordNetMissingError, load_wordnet


def test_adjectives_and_verbs_dropped_nouns_kept():
    f = NounFilter(drop=[])
    tags = ["dog", "beautiful", "wooden", "eat", "sit", "cloudy", "tree", "astronaut", "coffee"]
    assert f(tags) == ["dog", "tree", "astronaut", "coffee"]


def test_multi_word_tags_judged_by_head_word():
    f = NounFilter(drop=[])
    assert f.is_noun("traffic light") and f.is_noun("running shoe") and f.is_noun("cell phone")
    assert not f.is_noun("dog sleepy")  # head word is an adjective only


def test_unknown_words_and_compounds_kept():
    f = NounFilter(drop=[])
    assert f(["zorblax", "zorblax quibbleflux", "fluffy zorblax", "zorblax widget"]) == [
        "zorblax", "zorblax quibbleflux", "fluffy zorblax", "zorblax widget"]


def test_abstract_noun_list_and_noun_share():
    assert NounFilter()(["background", "photo", "view", "color", "dog", "white"]) == ["dog"]
    assert NounFilter(drop=[])(["background", "photo"]) == ["background", "photo"]
    assert NounFilter(drop=["dog"])(["Dog", "cat"]) == ["cat"]  # case-insensitive whole-tag match
    # "stand" has noun senses, but as a tag it is almost always the verb.
    assert NounFilter(drop=[]).is_noun("stand")
    assert not NounFilter(drop=[], min_noun_share=0.1).is_noun("stand")
    with pytest.raises(ValueError, match="min_noun_share"):
        NounFilter(min_noun_share=2)


def test_shipped_vocabulary_is_all_nouns_and_yaml_matches_default_drop():
    from lit_sr.extract_masks import compose_extract

    vocab = read_vocabulary()
    assert len(vocab) >= 300
    assert [t for t in vocab if not NounFilter().is_noun(t)] == []
    cfg = compose_extract(["tagger=file", "tagger.path=x.csv", "grounding=tiny"])
    assert tuple(cfg.nouns.drop) == DEFAULT_DROP


def test_normalize_tags():
    assert normalize_tags("Dog | traffic_light,  dog ,, Red  Car") == ["dog", "traffic light", "red car"]


def test_missing_wordnet_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(nouns_mod, "wordnet_roots", lambda extra=None: [tmp_path])
    load_wordnet.cache_clear()
    try:
        with pytest.raises(WordNetMissingError, match="scripts/setup_wordnet.sh"):
            load_wordnet(None)
    finally:
        load_wordnet.cache_clear()
