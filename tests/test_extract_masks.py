"""The offline extraction job (tags → nouns → boxes → masks → cache) and its taggers/segmenter."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.mask_cache import MaskCache
from lit_sr.errors import ConfigError, WeightsError
from lit_sr.extract_masks import compose_extract, run
from lit_sr.tagging.file import FileTagger
from lit_sr.tagging.grounding import GroundedSAM2, boxes_to_xyxy, tiny_grounded_sam2


@pytest.fixture
def photos(tmp_path):
    """Three real photos (skimage, downscaled) and a tag file with adjectives and verbs among the tags."""
    import skimage.data

    root = tmp_path / "photos"
    root.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        arr = getattr(skimage.data, name)()
        Image.fromarray(np.ascontiguousarray(arr[::4, ::4])).save(root / f"{name}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    tags = tmp_path / "tags.csv"
    tags.write_text('image,tags\nastronaut.png,"person, beautiful, flag, rocket"\ncoffee,"cup, brown, saucer, spoon"\n'
                    'photos/chelsea.png,"cat, cute, sit, background"\n')
    return root, tags


def _args(root, tags, cache, *extra):
    return [f"image_dirs=[{root}]", f"cache_dir={cache}", "tagger=file", f"tagger.path={tags}", "grounding=tiny",
            "num_workers=0", "batch_size=2", "mask_max_side=64", "trainer.enable_progress_bar=false", *extra]


def test_extraction_writes_the_cache_and_resumes(photos, tmp_path):
    root, tags = photos
    cache_dir = tmp_path / "cache"
    counts = run(_args(root, tags, cache_dir))
    assert counts == {"written": 3, "skipped": 0, "failed": 1, "entries": 3}
    cache = MaskCache(cache_dir)
    assert not list(cache_dir.glob("journal-*.jsonl"))  # merged into index.json at the end
    entry = cache.entries["photos/astronaut.png"]
    assert entry.prompt == "person, beautiful, flag, rocket"  # the prompt keeps every tag
    assert set(entry.nouns) <= {"person", "flag", "rocket"}  # the adjective never reaches the detector
    assert entry.image_size == [128, 128] and entry.mask_size == [64, 64]
    nouns, prompt, masks = cache.load(entry)
    assert nouns == entry.nouns and masks.shape == (len(nouns), 64, 64) and masks.dtype == bool
    assert set(cache.entries["photos/chelsea.png"].nouns) <= {"cat"}  # "cute", "sit", "background" dropped
    assert cache.entries["photos/coffee.png"].image_size == [100, 150]  # 400x600 photo, every 4th pixel

    again = run(_args(root, tags, cache_dir))
    assert again == {"written": 0, "skipped": 3, "failed": 1, "entries": 3}  # the unreadable file is retried
    # A changed image is annotated again; the others stay skipped.
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "coffee.png")
    third = run(_args(root, tags, cache_dir))
    assert (third["written"], third["skipped"]) == (1, 2)
    assert MaskCache(cache_dir).entries["photos/coffee.png"].image_size == [40, 60]


def test_file_tagger_reads_csv_and_json(tmp_path):
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("a.png,dog, grass\nsub/b.jpg,\"Cat | Sofa\"\n")
    tagger = FileTagger(str(csv_file))
    out = tagger.tag([torch.zeros(3, 4, 4)] * 3, ["/x/a.png", "/data/sub/b.jpg", "/x/unknown.png"])
    assert out == [["dog", "grass"], ["cat", "sofa"], []] and tagger.unlisted == 1
    js = tmp_path / "t.json"
    js.write_text(json.dumps({"a": ["Dog", "traffic_light"], "b": "tree, tree"}))
    assert FileTagger(str(js)).tag([], ["/x/a.png", "b.png"]) == [["dog", "traffic light"], ["tree"]]
    js.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        FileTagger(str(js))
    with pytest.raises(ConfigError, match="not found"):
        FileTagger(str(tmp_path / "nope.csv"))


def test_ram_tagger_errors_name_the_fix(tmp_path, monkeypatch):
    from lit_sr.tagging.ram import RAMTagger

    with pytest.raises(WeightsError, match="nope.pth"):
        RAMTagger(weights=str(tmp_path / "nope.pth"))
    weights = tmp_path / "ram_plus.pth"
    weights.write_bytes(b"0")
    monkeypatch.setitem(sys.modules, "ram", None)  # not installable here; make the absence explicit
    with pytest.raises(ConfigError, match=r"recognize-anything.*transformers<4\.57"):
        RAMTagger(weights=str(weights))


def test_clip_tagger_picks_top_k_from_the_vocabulary(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    from lit_sr.model.backbone import TINY_VISION
    from lit_sr.model.clip_vocab import byte_level_clip_tokenizer
    from lit_sr.model.families.sd import TINY_TEXT
    from lit_sr.tagging.clip import CLIPTagger, read_vocabulary

    torch.manual_seed(0)
    tok = byte_level_clip_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), **ids, **TINY_TEXT), vision_config=TINY_VISION,
                     projection_dim=32)
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    tok.save_pretrained(tmp_path / "clip")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# test\ndog\ncat\ntree\ncar\nsky\n")
    tagger = CLIPTagger(str(tmp_path / "clip"), vocabulary=str(vocab), top_k=3, min_similarity=-1.0)
    images = [torch.rand(3, 40, 60), torch.rand(3, 50, 30)]
    tags = tagger(images, ["a.png", "b.png"])
    sims = tagger.similarities(images)
    assert sims.shape == (2, 5)
    for row, t in zip(sims, tags):
        assert t == [read_vocabulary(vocab)[i] for i in row.topk(3).indices.tolist()]
    assert CLIPTagger(str(tmp_path / "clip"), vocabulary=str(vocab), top_k=3, min_similarity=2.0)(images, ["a", "b"]) == [[], []]
    with pytest.raises(WeightsError, match="not found"):
        CLIPTagger(str(tmp_path / "missing"))


def test_grounding_text_spans_box_conversion_and_mask_sizes():
    g = tiny_grounded_sam2(seed=0)
    chunks = g.noun_chunks(["rocket", "traffic light", "dog"])
    assert [n for n, _ in chunks[0]] == ["rocket", "traffic light", "dog"]
    ids, spans = g._text(chunks[0])
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP], BERT ids Grounding DINO relies on
    assert [ids[b] for _, b in spans] == [1012] * 3  # each noun is followed by "."
    assert spans[1][1] - spans[1][0] == len("trafficlight")  # the tiny vocabulary splits words per letter
    many = g.noun_chunks([f"noun{i}" for i in range(20)])  # 6 tokens each: more than 64 fit
    assert len(many) > 1 and sum(len(c) for c in many) == 20
    boxes = boxes_to_xyxy(torch.tensor([[0.5, 0.5, 0.5, 0.25], [0.0, 0.0, 1.0, 1.0]]), height=40, width=80)
    assert boxes.tolist() == [[20.0, 15.0, 60.0, 25.0], [0.0, 0.0, 40.0, 20.0]]
    images = [torch.rand(3, 60, 90), torch.rand(3, 70, 50)]
    found = g(images, [["rocket", "person"], []], [(30, 45), (70, 50)])
    assert found[0].masks.shape[1:] == (30, 45) and set(found[0].nouns) <= {"rocket", "person"}
    assert found[0].masks.shape[0] == len(found[0].nouns) == len(set(found[0].nouns))
    assert found[1].nouns == [] and found[1].masks.shape == (0, 70, 50)


def test_missing_weights_and_bad_config_fail_with_one_line(tmp_path):
    with pytest.raises(WeightsError, match="grounding_dino: model directory not found"):
        GroundedSAM2(str(tmp_path / "gdino"), str(tmp_path / "sam2"))
    with pytest.raises(ConfigError, match="tagger.weights"):
        compose_extract([])
    with pytest.raises(ConfigError, match="unknown tagger 'bogus'; available: clip, file, ram"):
        compose_extract(["tagger=bogus"])
    with pytest.raises(ConfigError, match="unknown config key 'foo'"):
        compose_extract(["+foo=1", "tagger=file", "tagger.path=x"])


@pytest.mark.parametrize("group,choice", [("tagger", "ram"), ("tagger", "clip"), ("tagger", "file"),
                                          ("grounding", "gsam2"), ("grounding", "tiny")])
def test_every_extract_yaml_composes_and_instantiates(group, choice, tmp_path):
    from lit_sr.config.build import build_component

    tags = tmp_path / "tags.csv"
    tags.write_text("a.png,dog\n")
    required = {"ram": ["tagger.weights=/nonexistent/ram.pth"], "clip": ["tagger.path=/nonexistent/clip"],
                "file": [f"tagger.path={tags}"], "gsam2": ["grounding.grounding_dino=/nonexistent/gd",
                                                           "grounding.sam2=/nonexistent/sam2"], "tiny": []}
    base = {"tagger": ["tagger=file", f"tagger.path={tags}"], "grounding": ["grounding=tiny"]}
    other = base["grounding" if group == "tagger" else "tagger"]
    cfg = compose_extract([f"{group}={choice}", *required[choice], *other])
    if choice in ("ram", "clip", "gsam2"):
        with pytest.raises(WeightsError, match="/nonexistent/"):
            build_component(cfg[group], group)
    else:
        assert isinstance(build_component(cfg[group], group), torch.nn.Module)


def test_box_cap_and_sam_batches_bound_the_work_not_the_result():
    """Random weights keep every query: max_boxes caps them, sam_batch decodes them in chunks."""
    images = [torch.rand(3, 60, 90), torch.rand(3, 70, 50)]
    nouns, sizes = [["rocket", "person"], ["dog"]], [(30, 45), (35, 25)]
    g = tiny_grounded_sam2(seed=0)
    whole = g(images, nouns, sizes)
    g.sam_batch = 3  # 16 boxes per image, in 6 decoder calls
    for a, b in zip(whole, g(images, nouns, sizes)):
        assert a.boxes == b.boxes == 16 and a.nouns == b.nouns and torch.equal(a.masks, b.masks)
    best = [sorted(d[2] for d in dets)[-2:] for dets in g.detect(images, nouns)]
    g.max_boxes = 2
    capped = g.detect(images, nouns)
    assert [sorted(d[2] for d in dets) for dets in capped] == best
    assert [r.boxes for r in g(images, nouns, sizes)] == [2, 2]
    with pytest.raises(ValueError, match="sam_batch must be >= 1"):
        GroundedSAM2(g.detector, g.segmenter, tokenizer=g.tokenizer, sam_batch=0)


def test_help_lists_the_groups_and_exits_0(capsys):
    from lit_sr.extract_masks import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m lit_sr.extract_masks")
    for line in ("  tagger:", "  grounding:", "  trainer:", "*ram", "*gsam2", " file ", " tiny "):
        assert line in out, line
    assert "noise:" not in out  # training's groups are not this job's
    assert main(["--cfg", "tagger=file", "tagger.path=tags.csv", "grounding=tiny"]) == 0
    assert "tiny_grounded_sam2" in capsys.readouterr().out


def test_main_runs_the_job_prints_the_counts_and_reports_bad_config_in_one_line(photos, tmp_path, capsys):
    """``main(argv)``, as ``python -m lit_sr.extract_masks`` calls it: the summary line, then a resume; a bad
    override or a missing tag file is one ``error:`` line with exit status 2."""
    from lit_sr.extract_masks import main

    root, tags = photos
    args = _args(root, tags, tmp_path / "cache")
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        "mask cache: 3 written, 0 already cached, 1 unreadable, 3 entries"
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        "mask cache: 0 written, 3 already cached, 1 unreadable, 3 entries"
    for bad, message in ((["max_nounz=3"], "unknown config key 'max_nounz'"),
                         ([f"tagger.path={tmp_path / 'missing.csv'}"], "missing.csv")):
        assert main([*args, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "\n".join(err), err[-1]
