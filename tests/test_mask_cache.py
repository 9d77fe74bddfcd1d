"""Mask cache: masks follow the image's crop and flip; missing/stale/other-version entries are reported."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.hr_folder import HRCropDataset
from datamodules.mask_cache import (
    MASK_CACHE_VERSION,
    MaskCache,
    MaskCacheWarning,
    file_sha1,
    image_key,
    mask_size_for,
    pack_masks,
    unpack_masks,
)
from datamodules.sr_datamodule import DegradeCollate
from datamodules.tmg_dataset import collate_mask_fields, wrap_with_masks
from lit_sr.errors import ConfigError


def _scene(h: int = 96, w: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy gray image with one pure-red rectangle; returns (image, rectangle mask)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 200, size=(h, w, 3), dtype=np.uint8)
    img[..., 0] = img[..., 1]  # no pixel outside the object is pure red
    mask = np.zeros((h, w), dtype=bool)
    mask[20:61, 70:111] = True  # off-centre and asymmetric, so a wrong flip or offset shows
    img[mask] = (255, 0, 0)
    return img, mask


def _write(cache: MaskCache, path, root, prompt: str, nouns: list[str], masks: np.ndarray, max_side: int | None = None):
    img = np.asarray(Image.open(path))
    h, w = img.shape[:2]
    if max_side is not None:  # store downscaled, as the extraction job does for large images
        mh, mw = mask_size_for((h, w), max_side)
        masks = np.stack([np.asarray(Image.fromarray(m).resize((mw, mh), Image.NEAREST)) for m in masks])
    return cache.write(image_key(path, root), file_sha1(path), prompt, nouns, masks, (h, w), stat=os.stat(path))


@pytest.mark.parametrize("max_side", [None, 48])
def test_mask_follows_crop_and_flip(tmp_path, max_side):
    root = tmp_path / "photos"
    root.mkdir()
    img, mask = _scene()
    Image.fromarray(img).save(root / "scene.png")
    cache = MaskCache(tmp_path / "cache", create=True)
    _write(cache, root / "scene.png", root, "red box, wall", ["red box"], mask[None], max_side)
    cache.merge_journals()
    ds = wrap_with_masks(HRCropDataset([root / "scene.png"], crop_size=48, epoch_size=40), str(tmp_path / "cache"),
                         max_nouns=3)
    torch.manual_seed(0)
    flips = set()
    for i in range(len(ds)):
        item = ds[i]
        flips.add(item["crop"][2])
        red = (item["hq"][0] > 0.99) & (item["hq"][1] < 0.01) & (item["hq"][2] < 0.01)
        m = item["masks"][0]
        assert item["masks"].shape == (3, 48, 48) and item["masks"].dtype == torch.bool
        assert item["prompt"] == "red box, wall" and item["nouns"] == ["red box"]
        assert item["mask_valid"].tolist()[1:] == [False, False]
        if max_side is None:  # full-resolution masks are exact
            assert torch.equal(m, red), item["crop"]
            assert item["mask_valid"].tolist()[0] == bool(red.any())
        else:  # stored at 48/128 scale: wrong by at most one stored pixel (< 3 image pixels) at the border,
            # which may lie just outside the crop: grow and shrink the whole image's mask, then cut the crop
            y, x, flipped = item["crop"]
            full = torch.from_numpy(mask)
            grow = lambda t: torch.nn.functional.max_pool2d(t[None, None].float(), 7, 1, 3)[0, 0].bool()
            cut = lambda t: (lambda c: c.flip(-1) if flipped else c)(t[y : y + 48, x : x + 48])
            assert bool((m <= cut(grow(full))).all()) and bool((cut(~grow(~full)) <= m).all()), item["crop"]
            assert item["mask_valid"].tolist()[0] == bool(m.any())  # valid exactly where the cut mask has pixels
    assert flips == {True, False}


def test_report_counts_missing_stale_and_version_mismatch(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    names = ["ok", "missing", "stale", "oldversion"]
    for k, name in enumerate(names):
        Image.fromarray(_scene(seed=k)[0]).save(root / f"{name}.png")
    cache = MaskCache(tmp_path / "cache", create=True)
    for name in ("ok", "stale", "oldversion"):
        _write(cache, root / f"{name}.png", root, name, ["thing"], _scene()[1][None])
    cache.merge_journals()
    Image.fromarray(_scene(seed=99)[0]).save(root / "stale.png")  # image replaced after caching
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    index["entries"]["photos/oldversion.png"]["version"] = MASK_CACHE_VERSION + 1
    (tmp_path / "cache" / "index.json").write_text(json.dumps(index))

    files = sorted(root.glob("*.png"))
    with pytest.warns(MaskCacheWarning, match="1/4 images have masks; 1 missing .* 1 stale .* 1 version mismatch"):
        ds = wrap_with_masks(HRCropDataset(files, crop_size=32), str(tmp_path / "cache"))
    r = ds.report
    assert (r.total, r.ok, r.missing, r.stale, r.version_mismatch) == (4, 1, 1, 1, 1)
    assert r.examples["stale"] == [str(root / "stale.png")]
    by_name = {}
    for i in range(len(files)):
        item = ds.dataset[i]  # the wrapped dataset's own item ...
        by_name[item["path"]] = ds.annotation(item["path"], item["crop"], 32)  # ... annotated like __getitem__ does
    assert by_name[str(root / "ok.png")]["prompt"] == "ok"
    for bad in ("missing", "stale", "oldversion"):
        ann = by_name[str(root / f"{bad}.png")]
        assert ann["prompt"] == "" and ann["nouns"] == [] and not ann["mask_valid"].any()
    # Content hashes decide, not timestamps: touching a file keeps its entry usable.
    os.utime(root / "ok.png", ns=(1, 1))
    assert cache.status(root / "ok.png")[0] == "ok"


def test_pack_roundtrip_and_mask_size():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 7, 13)) > 0.5  # 91 bits per mask: not a multiple of 8
    assert np.array_equal(unpack_masks(pack_masks(masks), masks.shape), masks)
    empty = np.zeros((0, 5, 6), dtype=bool)  # an image without nouns
    assert unpack_masks(pack_masks(empty), empty.shape).shape == (0, 5, 6)
    assert mask_size_for((1000, 2000), 512) == (256, 512)
    assert mask_size_for((100, 80), 512) == (100, 80)  # never upscaled


def test_journal_survives_a_crash_and_merges(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(_scene()[0]).save(root / "a.png")
    cache = MaskCache(tmp_path / "cache", create=True)
    _write(cache, root / "a.png", root, "p", ["box"], _scene()[1][None])
    journal = next((tmp_path / "cache").glob("journal-*.jsonl"))
    with open(journal, "a") as f:
        f.write('{"key": "photos/b.png", "entry": {"sha1"')  # a line cut short by a crash
    reader = MaskCache(tmp_path / "cache")
    assert list(reader.entries) == ["photos/a.png"]  # the unmerged journal is visible to readers
    assert reader.merge_journals() == 1
    assert not list((tmp_path / "cache").glob("journal-*.jsonl"))
    nouns, prompt, masks = MaskCache(tmp_path / "cache").load(reader.entries["photos/a.png"])
    assert nouns == ["box"] and prompt == "p" and np.array_equal(masks[0], _scene()[1])
    assert reader.find(tmp_path / "moved" / "photos" / "a.png")[0] == "photos/a.png"  # found by path suffix


def test_missing_or_corrupt_cache_fails_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="mask cache not found: .*extract_masks"):
        MaskCache(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.json").write_text("{not json")
    with pytest.raises(ConfigError, match="corrupt"):
        MaskCache(tmp_path / "bad")


def test_batches_carry_prompts_nouns_and_stacked_masks(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    img, mask = _scene()
    Image.fromarray(img).save(root / "scene.png")
    cache = MaskCache(tmp_path / "cache", create=True)
    _write(cache, root / "scene.png", root, "red box", ["red box"], mask[None])
    ds = wrap_with_masks(HRCropDataset([root / "scene.png"], crop_size=32, epoch_size=3), str(tmp_path / "cache"), 4)
    items = [ds[i] for i in range(3)]
    batch = DegradeCollate(None, seed=0)(items)
    batch.update(collate_mask_fields(items))
    assert batch["masks"].shape == (3, 4, 32, 32) and batch["mask_valid"].shape == (3, 4)
    assert batch["prompt"] == ["red box"] * 3 and batch["nouns"] == [["red box"]] * 3
    assert torch.utils.data.default_collate([it["masks"] for it in items]).shape == (3, 4, 32, 32)
    assert collate_mask_fields([{"hq": torch.zeros(1)}]) == {}


def test_byte_identical_copies_in_another_folder_match_by_content(tmp_path):
    """Keys are '<folder name>/<path inside it>': copies under another folder name match nothing by path
    (the warning says how files are matched and what to set); data.mask_match=content finds them by SHA-1."""
    import shutil

    root = tmp_path / "photos"
    root.mkdir()
    cache = MaskCache(tmp_path / "cache", create=True)
    for k in range(3):
        img, mask = _scene(seed=k)
        Image.fromarray(img).save(root / f"{k}.png")
        _write(cache, root / f"{k}.png", root, f"p{k}", ["thing"], mask[None])
    cache.merge_journals()
    copies = tmp_path / "elsewhere"
    shutil.copytree(root, copies)
    files = sorted(copies.glob("*.png"))
    with pytest.warns(MaskCacheWarning, match=r"0/3 images have masks.*'<image folder name>/<path inside it>'.*"
                                              r"data\.mask_match=content"):
        by_path = wrap_with_masks(HRCropDataset(files, crop_size=32), str(tmp_path / "cache"))
    assert by_path.report.missing == 3
    by_content = wrap_with_masks(HRCropDataset(files, crop_size=32), str(tmp_path / "cache"), match="content")
    assert by_content.report.ok == 3
    for k, path in enumerate(files):
        assert by_content.annotation(str(path), (0, 0, False), 32)["prompt"] == f"p{k}"
    Image.fromarray(_scene(seed=9)[0]).save(copies / "new.png")  # other bytes: still missing, by either rule
    _, report = MaskCache(tmp_path / "cache").match(sorted(copies.glob("*.png")), match="content")
    assert (report.ok, report.missing) == (3, 1)


def test_mask_match_is_a_data_setting(tmp_path, make_cfg):
    from lit_sr.config.build import build_datamodule

    with pytest.raises(ConfigError, match="mask_match"):
        build_datamodule(make_cfg("data.mask_match=hash"))
    assert build_datamodule(make_cfg("data.mask_match=content")).mask_match == "content"
