"""Real paired LQ/HQ test sets (RealSR, DRealSR, or any folder pair), matched by file name.

Benchmark sets come in a few naming schemes:

========== ====================================== ======================================
layout     LQ file                                HQ file
========== ====================================== ======================================
same_name  ``lq_root/0001.png``                   ``hq_root/0001.png``
realsr     ``Canon/Test/4/Canon_001_LR4.png``     ``Canon/Test/4/Canon_001_HR.png``
drealsr    ``test_LR/DSC_1454_x4.png``            ``test_HR/DSC_1454_x1.png``
========== ====================================== ======================================

RealSR (V3, Cai et al. 2019) keeps both files of a pair in the same folder, so ``lq_root`` and
``hq_root`` may be the same folder: the patterns decide which file is which. Each layout is just
a pair of regular expressions applied to file stems (``{scale}`` is replaced by the scale) whose
``key`` group must agree; pass ``lq_pattern``/``hq_pattern`` for any other scheme.

Problems never crash the dataset: LQ files without an HQ partner, HQ files without an LQ
partner, two files claiming the same name, unreadable files and pairs whose sizes do not match
the scale are collected in :class:`PairingReport` (``dataset.report``), logged as one warning
naming the files, and the bad pairs are left out.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from omegaconf import MISSING
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from datamodules.file_index import index_images
from datamodules.imageio import load_image
from lit_sr.errors import FieldError, ImageLoadError

logger = logging.getLogger(__name__)

LAYOUTS: dict[str, tuple[str, str]] = {
    "same_name": (r"(?P<key>.+)", r"(?P<key>.+)"),
    "realsr": (r"(?P<key>.+)_LR{scale}", r"(?P<key>.+)_HR"),
    "drealsr": (r"(?P<key>.+)_x{scale}", r"(?P<key>.+)_x1"),
}

@dataclass
class PairedConfig:
    """``data.val_paired``: real LQ/HQ pairs for validation (see :class:`PairedFolderDataset`)."""

    lq_root: str = MISSING
    hq_root: str = MISSING
    layout: str = "same_name"
    lq_pattern: Optional[str] = None
    hq_pattern: Optional[str] = None
    match_subdirs: bool = True
    verify_decode: bool = False

    def __post_init__(self) -> None:
        for name in ("lq_root", "hq_root"):
            value = getattr(self, name)
            if not Path(value).expanduser().is_dir():
                raise FieldError(name, f"is not an existing folder: {value}")
        if self.layout not in LAYOUTS:
            raise FieldError("layout", f"must be one of {sorted(LAYOUTS)}, got {self.layout!r}")


PROBLEM_KINDS = ("missing_hq", "unmatched_hq", "duplicate_lq", "duplicate_hq", "unreadable", "size_mismatch")


@dataclass(frozen=True)
class PairProblem:
    """One issue found while pairing: ``kind`` (see ``PROBLEM_KINDS``), the pair ``name`` and the files involved."""

    kind: str
    name: str
    detail: str


@dataclass
class PairingReport:
    """What pairing found: how many good pairs, and every problem by name."""

    pairs: int = 0
    problems: list[PairProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def by_kind(self, kind: str) -> list[PairProblem]:
        return [p for p in self.problems if p.kind == kind]

    def names(self, kind: str) -> list[str]:
        return [p.name for p in self.by_kind(kind)]

    def summary(self, limit: int = 10) -> str:
        """A few lines: the pair count, then each kind of problem with up to ``limit`` examples."""
        lines = [f"{self.pairs} valid LQ/HQ pairs, {len(self.problems)} problem(s)"]
        for kind in PROBLEM_KINDS:
            found = self.by_kind(kind)
            if found:
                shown = "; ".join(f"{p.name} ({p.detail})" for p in found[:limit])
                more = f"; ... and {len(found) - limit} more" if len(found) > limit else ""
                lines.append(f"  {kind} [{len(found)}]: {shown}{more}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Pair:
    name: str
    lq: Path
    hq: Path
    hq_size: tuple[int, int]  # (H, W) the HQ is cropped to: LQ size × scale


def _compile(pattern: str, scale: int, what: str) -> re.Pattern[str]:
    try:
        # DOTALL: a file name may hold any character, a newline too ('.' must match it).
        compiled = re.compile(pattern.replace("{scale}", str(scale)), re.DOTALL)
    except re.error as exc:
        raise ValueError(f"{what} is not a valid regular expression ({exc}): {pattern!r}") from exc
    return compiled


def _key(pattern: re.Pattern[str], stem: str) -> str | None:
    match = pattern.fullmatch(stem)
    if match is None:
        return None
    if "key" in pattern.groupindex:
        return match.group("key")
    return match.group(1) if pattern.groups else match.group(0)


def _size(path: Path) -> tuple[int, int]:
    """(H, W) after EXIF orientation, from the header only; raises ImageLoadError."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            # Pillow decodes a whole PNG to look for an eXIf chunk after the pixels; skip that (rare) case.
            has_exif = img.format != "PNG" or "exif" in img.info
            if has_exif and img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # 90° rotations swap the sides
                w, h = h, w
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path}: cannot read image header ({exc})") from exc
    return h, w


class PairedFolderDataset(Dataset):
    """LQ/HQ pairs from folders, matched by name; items are ``{"lq", "hq", "name"}``.

    Args:
        lq_root, hq_root: folders searched recursively (may be the same folder).
        scale: HQ size / LQ size. An HQ image may exceed ``LQ × scale`` by less than ``scale``
            pixels per side (a size that was not a multiple); it is then cropped to ``LQ × scale``
            from the top-left, as BasicSR does.
        layout: ``same_name``, ``realsr`` or ``drealsr`` (see the module docstring).
        lq_pattern, hq_pattern: regular expressions for the file stems (override the layout);
            the ``key`` group (else group 1, else the whole stem) names the pair. Files whose stem
            does not match are ignored.
        match_subdirs: the key includes the file's folder relative to its root, so mirrored
            trees pair folder by folder and equal names in different folders do not collide.
        verify_decode: fully decode every file while pairing (slow) instead of reading headers,
            so truncated files are reported up front rather than failing in ``__getitem__``.
    """

    def __init__(
        self,
        lq_root: str | Path,
        hq_root: str | Path,
        scale: int,
        layout: str = "same_name",
        lq_pattern: str | None = None,
        hq_pattern: str | None = None,
        match_subdirs: bool = True,
        verify_decode: bool = False,
    ) -> None:
        if int(scale) < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
        self.scale = int(scale)
        self.lq_root, self.hq_root = Path(lq_root), Path(hq_root)
        default_lq, default_hq = LAYOUTS[layout]
        self._lq_re = _compile(lq_pattern or default_lq, self.scale, "lq_pattern")
        self._hq_re = _compile(hq_pattern or default_hq, self.scale, "hq_pattern")
        self.match_subdirs = bool(match_subdirs)
        self.report = PairingReport()
        self.pairs = self._pair(verify_decode)
        self.report.pairs = len(self.pairs)
        if self.report.problems:
            logger.warning("paired dataset %s | %s: %s", self.lq_root, self.hq_root, self.report.summary())
        if not self.pairs:
            raise ValueError(f"no valid LQ/HQ pairs under {self.lq_root} and {self.hq_root}: {self.report.summary()}")

    # -------------------------------------------------------------------------------- pairing

    def _collect(self, root: Path, pattern: re.Pattern[str]) -> dict[str, list[Path]]:
        found: dict[str, list[Path]] = defaultdict(list)
        base = root.expanduser().resolve()
        for path in index_images([root]):
            key = _key(pattern, path.stem)
            if key is None:
                continue
            folder = path.parent.relative_to(base).as_posix()
            if self.match_subdirs and folder != ".":
                key = f"{folder}/{key}"
            found[key].append(path)
        return found

    def _problem(self, kind: str, name: str, detail: str) -> None:
        self.report.problems.append(PairProblem(kind, name, detail))

    def _pair(self, verify_decode: bool) -> list[_Pair]:
        lqs = self._collect(self.lq_root, self._lq_re)
        hqs = self._collect(self.hq_root, self._hq_re)
        if any(lqs.get(k) == hqs.get(k) for k in lqs.keys() & hqs.keys()):
            raise ValueError(
                "lq_pattern and hq_pattern select the same files; with lq_root == hq_root use a layout "
                "(e.g. 'realsr') or patterns that tell LQ and HQ names apart"
            )
        pairs: list[_Pair] = []
        for name in sorted(lqs):
            lq_files, hq_files = lqs[name], hqs.get(name, [])
            if len(lq_files) > 1:
                self._problem("duplicate_lq", name, ", ".join(p.name for p in lq_files))
                continue
            if not hq_files:
                self._problem("missing_hq", name, f"{lq_files[0].name} has no HQ partner")
                continue
            if len(hq_files) > 1:
                self._problem("duplicate_hq", name, ", ".join(p.name for p in hq_files))
                continue
            pair = self._check(name, lq_files[0], hq_files[0], verify_decode)
            if pair is not None:
                pairs.append(pair)
        for name in sorted(hqs.keys() - lqs.keys()):
            self._problem("unmatched_hq", name, f"{', '.join(p.name for p in hqs[name])} has no LQ partner")
        return pairs

    def _check(self, name: str, lq: Path, hq: Path, verify_decode: bool) -> _Pair | None:
        try:
            if verify_decode:
                lq_size, hq_size = tuple(load_image(lq).shape[1:]), tuple(load_image(hq).shape[1:])
            else:
                lq_size, hq_size = _size(lq), _size(hq)
        except ImageLoadError as exc:
            self._problem("unreadable", name, str(exc))
            return None
        (h, w), (hh, hw), s = lq_size, hq_size, self.scale
        if not (h * s <= hh < (h + 1) * s and w * s <= hw < (w + 1) * s):
            self._problem(
                "size_mismatch", name, f"LQ {lq.name} is {h}x{w}, so HQ should be {h * s}x{w * s}, but {hq.name} is {hh}x{hw}"
            )
            return None
        return _Pair(name, lq, hq, (h * s, w * s))

    # -------------------------------------------------------------------------------- items

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        pair = self.pairs[index]
        lq, hq = load_image(pair.lq), load_image(pair.hq)
        h, w = pair.hq_size
        if hq.shape[1] < h or hq.shape[2] < w or tuple(lq.shape[1:]) != (h // self.scale, w // self.scale):
            raise ImageLoadError(f"{pair.hq}: size changed since the dataset was indexed")
        return {"lq": lq, "hq": hq[:, :h, :w].contiguous(), "name": pair.name}
