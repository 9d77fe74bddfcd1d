"""Paired LQ/HQ folders: RealSR / DRealSR / same-name layouts, and every mismatch reported by name."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.paired import PairedFolderDataset
from lit_sr.errors import ImageLoadError


def _write(path: Path, h: int, w: int, seed: int = 0, mode: str = "RGB") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return arr


def test_same_name_layout_loads_matching_pairs(tmp_path: Path) -> None:
    hq = _write(tmp_path / "hq" / "a.png", 64, 48, seed=1)
    lq = _write(tmp_path / "lq" / "a.png", 16, 12, seed=2)
    _write(tmp_path / "hq" / "b.png", 32, 32, seed=3)
    _write(tmp_path / "lq" / "b.png", 8, 8, seed=4)
    ds = PairedFolderDataset(tmp_path / "lq", tmp_path / "hq", scale=4)
    assert len(ds) == 2 and ds.report.ok
    item = ds[0]
    assert item["name"] == "a"
    assert item["lq"].shape == (3, 16, 12) and item["hq"].shape == (3, 64, 48)
    assert item["lq"].dtype == torch.float32 and 0 <= float(item["lq"].min()) and float(item["hq"].max()) <= 1
    assert torch.equal((item["hq"] * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(hq))
    assert torch.equal((item["lq"] * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(lq))


def test_realsr_layout_pairs_within_one_folder(tmp_path: Path) -> None:
    for camera in ("Canon", "Nikon"):
        folder = tmp_path / "RealSR(V3)" / camera / "Test" / "4"
        for k in (1, 2):
            _write(folder / f"{camera}_00{k}_HR.png", 40, 40, seed=k)
            _write(folder / f"{camera}_00{k}_LR4.png", 10, 10, seed=10 + k)
    root = tmp_path / "RealSR(V3)"
    ds = PairedFolderDataset(root, root, scale=4, layout="realsr")
    assert len(ds) == 4 and ds.report.ok
    assert [p.name for p in ds.pairs] == [
        "Canon/Test/4/Canon_001", "Canon/Test/4/Canon_002", "Nikon/Test/4/Nikon_001", "Nikon/Test/4/Nikon_002",
    ]
    assert ds[0]["hq"].shape == (3, 40, 40) and ds[0]["lq"].shape == (3, 10, 10)
    # The same folder with the same-name layout cannot tell LQ from HQ: a clear error, not a silent self-pairing.
    with pytest.raises(ValueError, match="select the same files"):
        PairedFolderDataset(root, root, scale=4)


def test_drealsr_layout_and_hq_cropped_to_multiple(tmp_path: Path) -> None:
    _write(tmp_path / "test_HR" / "DSC_1454_x1.png", 43, 42, seed=1)  # 10·4 + 3 rows, 10·4 + 2 cols
    _write(tmp_path / "test_LR" / "DSC_1454_x4.png", 10, 10, seed=2)
    _write(tmp_path / "test_HR" / "panasonic_16_x1.jpg", 80, 40, seed=3)
    _write(tmp_path / "test_LR" / "panasonic_16_x4.jpg", 20, 10, seed=4)
    ds = PairedFolderDataset(tmp_path / "test_LR", tmp_path / "test_HR", scale=4, layout="drealsr")
    assert [p.name for p in ds.pairs] == ["DSC_1454", "panasonic_16"] and ds.report.ok
    assert ds[0]["hq"].shape == (3, 40, 40)  # top-left crop to LQ × scale
    assert ds[1]["hq"].shape == (3, 80, 40)


def test_custom_patterns(tmp_path: Path) -> None:
    _write(tmp_path / "gt" / "img_0007_gt.png", 16, 16)
    _write(tmp_path / "in" / "0007_lowres.png", 8, 8)
    ds = PairedFolderDataset(tmp_path / "in", tmp_path / "gt", scale=2,
                             lq_pattern=r"(?P<key>\d+)_lowres", hq_pattern=r"img_(\d+)_gt")
    assert [p.name for p in ds.pairs] == ["0007"]


def test_problems_are_reported_by_name_and_bad_pairs_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lq, hq = tmp_path / "lq", tmp_path / "hq"
    _write(lq / "good.png", 8, 8)
    _write(hq / "good.png", 32, 32)
    _write(lq / "orphan.png", 8, 8)  # no HQ
    _write(hq / "lonely.png", 32, 32)  # no LQ
    _write(lq / "wrong.png", 8, 8)
    _write(hq / "wrong.png", 30, 32)  # should be 32x32
    _write(lq / "twice.png", 8, 8)
    _write(lq / "twice.jpg", 8, 8)  # two LQ files named "twice"
    _write(hq / "twice.png", 32, 32)
    _write(lq / "dup_hq.png", 8, 8)
    _write(hq / "dup_hq.png", 32, 32)
    _write(hq / "dup_hq.bmp", 32, 32)
    _write(lq / "broken.png", 8, 8)
    (hq / "broken.png").write_bytes(b"not an image at all")
    with caplog.at_level(logging.WARNING, logger="datamodules.paired"):
        ds = PairedFolderDataset(lq, hq, scale=4)
    assert [p.name for p in ds.pairs] == ["good"] and len(ds) == 1
    report = ds.report
    assert report.names("missing_hq") == ["orphan"]
    assert report.names("unmatched_hq") == ["lonely"]
    assert report.names("size_mismatch") == ["wrong"]
    assert "HQ should be 32x32" in report.by_kind("size_mismatch")[0].detail
    assert report.names("duplicate_lq") == ["twice"]
    assert report.names("duplicate_hq") == ["dup_hq"]
    assert report.names("unreadable") == ["broken"]
    assert not report.ok and report.pairs == 1
    warning = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("orphan", "lonely", "wrong", "twice", "dup_hq", "broken"):
        assert name in warning


def test_exif_rotation_is_taken_into_account(tmp_path: Path) -> None:
    """A portrait photo stored landscape with EXIF orientation 6 is 32x16 after load_image, not 16x32."""
    arr = np.random.default_rng(0).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "hq").mkdir()
    Image.fromarray(arr).save(tmp_path / "hq" / "p.jpg", exif=exif)
    _write(tmp_path / "lq" / "p.png", 16, 8)
    ds = PairedFolderDataset(tmp_path / "lq", tmp_path / "hq", scale=2)
    assert ds.report.ok and ds[0]["hq"].shape == (3, 32, 16)


def test_truncated_file_is_reported_with_verify_decode_or_fails_clearly_on_load(tmp_path: Path) -> None:
    _write(tmp_path / "lq" / "t.png", 8, 8)
    _write(tmp_path / "hq" / "t.png", 32, 32, seed=5)
    data = (tmp_path / "hq" / "t.png").read_bytes()
    (tmp_path / "hq" / "t.png").write_bytes(data[: len(data) // 2])
    _write(tmp_path / "lq" / "ok.png", 8, 8)
    _write(tmp_path / "hq" / "ok.png", 32, 32)
    ds = PairedFolderDataset(tmp_path / "lq", tmp_path / "hq", scale=4, verify_decode=True)
    assert ds.report.names("unreadable") == ["t"] and [p.name for p in ds.pairs] == ["ok"]
    lazy = PairedFolderDataset(tmp_path / "lq", tmp_path / "hq", scale=4)  # header is intact
    index = [p.name for p in lazy.pairs].index("t")
    with pytest.raises(ImageLoadError, match="t.png"):
        lazy[index]


def test_config_errors_are_clear(tmp_path: Path) -> None:
    _write(tmp_path / "lq" / "a.png", 8, 8)
    _write(tmp_path / "hq" / "a.png", 20, 20)
    with pytest.raises(ValueError, match="no valid LQ/HQ pairs"):
        PairedFolderDataset(tmp_path / "lq", tmp_path / "hq", scale=4)
    with pytest.raises(ValueError, match="layout must be one of"):
        PairedFolderDataset(tmp_path / "lq", tmp_path / "hq", scale=4, layout="realsrv3")
    with pytest.raises(ValueError, match="lq_pattern is not a valid regular expression"):
        PairedFolderDataset(tmp_path / "lq", tmp_path / "hq", scale=4, lq_pattern="(")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        PairedFolderDataset(tmp_path / "nope", tmp_path / "hq", scale=4)
