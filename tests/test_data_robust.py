"""Bad training images are skipped, counted and warned about; odd formats are converted."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.degradation.bicubic import BicubicDegradation
from datamodules.hr_folder import HRCropDataset
from datamodules.imageio import load_image
from datamodules.sr_datamodule import DegradeCollate
from lit_sr.errors import ImageLoadError


def _photo(h=96, w=96, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture
def messy_folder(tmp_path):
    d = tmp_path / "train"
    d.mkdir()
    Image.fromarray(_photo()).save(d / "good.png")
    Image.fromarray(_photo()[..., 0]).save(d / "gray.png")
    rgba = np.concatenate([_photo(), np.full((96, 96, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.fromarray((np.linspace(0, 65535, 96 * 96).reshape(96, 96)).astype(np.uint16)).save(d / "deep16.png")
    (d / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    buf = d / "full.jpg"
    Image.fromarray(_photo()).save(buf, quality=90)
    (d / "truncated.jpg").write_bytes(buf.read_bytes()[:300])
    buf.unlink()
    Image.fromarray(_photo(20, 20)).save(d / "tiny.png")
    return d


def test_odd_formats_convert_to_rgb_in_range(messy_folder):
    for name in ("gray.png", "rgba.png", "deep16.png"):
        img = load_image(messy_folder / name)
        assert img.shape == (3, 96, 96) and img.dtype == torch.float32
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    deep = load_image(messy_folder / "deep16.png")
    assert float(deep.max()) > 0.99 and float(deep.min()) < 0.01  # 16-bit range mapped to [0, 1]
    gray = load_image(messy_folder / "gray.png")
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


@pytest.mark.parametrize("name", ["corrupt.jpg", "truncated.jpg"])
def test_corrupt_files_raise_one_line_error(messy_folder, name):
    with pytest.raises(ImageLoadError) as info:
        load_image(messy_folder / name)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_bad_training_images_are_skipped_counted_and_warned(messy_folder, caplog):
    files = sorted(messy_folder.iterdir())
    ds = HRCropDataset(files, crop_size=64, epoch_size=len(files) * 4)
    collate = DegradeCollate(BicubicDegradation(scale=4), seed=0)
    with caplog.at_level(logging.WARNING, logger="datamodules.hr_folder"):
        items = [ds[i] for i in range(len(ds))]
    batch = collate(items)
    assert batch["hq"].shape == (len(ds), 3, 64, 64) and batch["lq"].shape == (len(ds), 3, 16, 16)
    used = {it["path"].rsplit("/", 1)[-1] for it in items}
    assert used == {"good.png", "gray.png", "rgba.png", "deep16.png"}
    assert sorted(Path(p).name for p in batch["bad_files"]) == ["corrupt.jpg", "tiny.png", "truncated.jpg"]  # once each
    warned = " ".join(r.getMessage() for r in caplog.records)
    for bad in ("corrupt.jpg", "truncated.jpg", "tiny.png"):
        assert bad in warned
    # each bad file is warned about once per process, however often it is hit
    assert sum("corrupt.jpg" in r.getMessage() for r in caplog.records) == 1
