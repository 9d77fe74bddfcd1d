"""The TMG mask cache: per-image prompt, nouns and noun masks, written offline, read in training.

This format is the contract between the extraction job (``python -m lit_sr.extract_masks``,
any tagger/segmenter) and training (:mod:`datamodules.tmg_dataset`). Version 1:

``<root>/index.json``::

    {"format": "lit_sr.mask_cache", "version": 1,
     "entries": {"<key>": {"sha1": ..., "file": "masks/ab/<name>.npz", "prompt": "dog, grass, white",
                           "nouns": ["dog", "grass"], "image_size": [H, W], "mask_size": [h, w],
                           "bytes": <file size>, "mtime_ns": <file mtime>, "version": 1}, ...}}

* ``key`` is ``<image folder name>/<path inside it>`` (``DIV2K_train_HR/0001.png``); training
  finds an image's entry by the longest matching path suffix, so a dataset may move (keeping
  at least its folder's name). With ``match="content"`` (``data.mask_match=content``) an image
  no key matches is found by the SHA-1 of its bytes: copies in a folder of another name match.
* ``sha1`` is the SHA-1 of the image file's bytes: an entry whose image changed is *stale*.
  Training checks ``bytes``/``mtime_ns`` first and hashes only files whose stat differs.
* ``<root>/masks/<xx>/<name>.npz`` (one per image; ``np.load(..., allow_pickle=False)`` safe):
  ``masks`` uint8 ``(N, ceil(h*w/8))`` = ``numpy.packbits`` of each flattened bool mask,
  ``shape`` ``[N, h, w]``, ``nouns`` (str array, N), ``prompt``, ``sha1``, ``image_size`` [H, W],
  ``version``. Masks are stored at the image's own aspect, downscaled so the long side is at
  most ``mask_max_side`` (512 by default; never upscaled); ``mask_size`` records (h, w). They
  cover the whole image as decoded by :func:`datamodules.imageio.load_image` (EXIF-rotated).
* Writers (one per rank) append finished entries to ``<root>/journal-<rank>-<id>.jsonl`` after
  the ``.npz`` is complete; :meth:`MaskCache.merge_journals` folds them into ``index.json``
  (atomically). Readers see index + unmerged journals, so a crashed job loses nothing.

Entries of another ``version``, entries whose image changed (stale) and images without an entry
(missing) are counted in a :class:`CacheReport` and warned about once; they get no masks.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lit_sr.errors import ConfigError

log = logging.getLogger(__name__)

MASK_CACHE_VERSION = 1
FORMAT = "lit_sr.mask_cache"
INDEX = "index.json"


class MaskCacheWarning(UserWarning):
    """Some training images have no usable cache entry (missing, stale or another version)."""


def file_sha1(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def mask_size_for(image_size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The stored mask resolution: the image's aspect, long side ≤ ``max_side`` (never upscaled)."""
    h, w = int(image_size[0]), int(image_size[1])
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def image_key(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``<root folder name>/<path relative to root>`` with forward slashes."""
    root = Path(root).resolve()
    return (Path(root.name) / Path(path).resolve().relative_to(root)).as_posix()


def pack_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks, dtype=bool)
    return np.packbits(masks.reshape(masks.shape[0], int(np.prod(masks.shape[1:]))), axis=1)


def unpack_masks(packed: np.ndarray, shape) -> np.ndarray:
    n, h, w = (int(s) for s in shape)
    if n == 0:
        return np.zeros((0, h, w), dtype=bool)
    return np.unpackbits(packed, axis=1, count=h * w).reshape(n, h, w).astype(bool)


@dataclass
class CacheEntry:
    """One image's index record (see the module docstring)."""

    sha1: str
    file: str
    prompt: str
    nouns: list[str]
    image_size: list[int]
    mask_size: list[int]
    bytes: int = -1
    mtime_ns: int = -1
    version: int = MASK_CACHE_VERSION

    @classmethod
    def from_dict(cls, d: dict) -> "CacheEntry":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        try:
            return cls(**known)
        except TypeError:  # a record from a format that lacks fields: unusable, counted as another version
            return cls(sha1="", file="", prompt="", nouns=[], image_size=[0, 0], mask_size=[0, 0], version=-1)


@dataclass
class CacheReport:
    """How the cache covers a list of images; ``problems`` counts the ones without usable masks."""

    total: int = 0
    ok: int = 0
    missing: int = 0
    stale: int = 0
    version_mismatch: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def problems(self) -> int:
        return self.missing + self.stale + self.version_mismatch

    def add(self, kind: str, path: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if kind != "ok":
            ex = self.examples.setdefault(kind, [])
            if len(ex) < 3:
                ex.append(str(path))

    def summary(self) -> str:
        parts = [f"{self.ok}/{self.total} images have masks"]
        for kind in ("missing", "stale", "version_mismatch"):
            n = getattr(self, kind)
            if n:
                parts.append(f"{n} {kind.replace('_', ' ')} (e.g. {self.examples[kind][0]})")
        return "; ".join(parts)

    def warn(self, root: str | os.PathLike, match: str = "path") -> None:
        """One warning naming the counts, how images were matched and the fix, when anything is not covered."""
        if not self.problems:
            return
        how = ("entries are found by '<image folder name>/<path inside it>' (the longest matching path suffix)"
               + (", then by the SHA-1 of the file's bytes" if match == "content" else
                  "; for copies in a folder of another name set data.mask_match=content (SHA-1 of the bytes)"))
        warnings.warn(f"mask cache {root}: {self.summary()}; these images train without TMG masks ({how}; "
                      f"or update the cache: python -m lit_sr.extract_masks cache_dir={root} ...)",
                      MaskCacheWarning, stacklevel=3)

    def to_dict(self) -> dict:
        return asdict(self)


class MaskCache:
    """Reader/writer of one cache folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, create: bool = False) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            if not create:
                raise ConfigError(f"mask cache not found: {self.root} (build it: python -m lit_sr.extract_masks "
                                  f"cache_dir={self.root} image_dirs=[...])")
            self.root.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, CacheEntry] = {}
        self.foreign_version: int | None = None
        self._journal: Path | None = None
        self._by_sha1: dict[str, str] | None = None  # SHA-1 → key, built on first content lookup
        self.reload()

    # ------------------------------------------------------------------ reading
    def reload(self) -> None:
        """Read ``index.json`` and any unmerged journals (later records win)."""
        self.entries = {}
        self._by_sha1 = None
        index = self.root / INDEX
        if index.is_file():
            try:
                data = json.loads(index.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"mask cache index {index} is corrupt ({exc}); delete it and re-run "
                                  "python -m lit_sr.extract_masks") from None
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ConfigError(f"{index} is not a lit_sr mask cache index")
            if data.get("version") != MASK_CACHE_VERSION:
                self.foreign_version = data.get("version")
            for key, rec in (data.get("entries") or {}).items():
                rec = dict(rec)
                rec.setdefault("version", data.get("version"))  # entries inherit the index's version
                self.entries[key] = CacheEntry.from_dict(rec)
        for journal in sorted(self.root.glob("journal-*.jsonl")):
            for line in journal.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self.entries[rec["key"]] = CacheEntry.from_dict(rec["entry"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by a crash: its image is simply redone

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, path: str | os.PathLike) -> tuple[str, CacheEntry] | None:
        """The entry whose key is the longest suffix of ``path``."""
        parts = Path(path).parts
        for n in range(len(parts), 0, -1):
            key = "/".join(parts[-n:])
            if key in self.entries:
                return key, self.entries[key]
        return None

    def find_content(self, sha1: str) -> tuple[str, CacheEntry] | None:
        """The entry of an image with these bytes (any key: a copy in another folder)."""
        if self._by_sha1 is None:
            self._by_sha1 = {}
            for key, entry in sorted(self.entries.items()):
                if entry.sha1:
                    self._by_sha1.setdefault(entry.sha1, key)
        key = self._by_sha1.get(sha1)
        return None if key is None else (key, self.entries[key])

    def load(self, entry: CacheEntry) -> tuple[list[str], str, np.ndarray]:
        """``(nouns, prompt, masks)`` of an entry; masks are bool ``(N, h, w)``."""
        with np.load(self.root / entry.file, allow_pickle=False) as z:
            masks = unpack_masks(z["masks"], z["shape"])
            return [str(n) for n in z["nouns"]], str(z["prompt"]), masks

    def status(self, path: str | os.PathLike, verify: str = "stat") -> tuple[str, CacheEntry | None]:
        """``ok`` / ``missing`` / ``stale`` / ``version_mismatch`` for one image file.

        ``verify``: ``stat`` (hash only when size/mtime differ from the record), ``sha1`` (always
        hash), ``none`` (trust the key).
        """
        if verify not in ("stat", "sha1", "none"):
            raise ValueError(f"verify must be 'stat', 'sha1' or 'none', got {verify!r}")
        found = self.find(path)
        if found is None:
            return "missing", None
        _, entry = found
        if entry.version != MASK_CACHE_VERSION:
            return "version_mismatch", entry
        if verify == "none":
            return "ok", entry
        if verify == "stat":
            st = os.stat(path)
            if st.st_size == entry.bytes and st.st_mtime_ns == entry.mtime_ns:
                return "ok", entry
        return ("ok" if file_sha1(path) == entry.sha1 else "stale"), entry

    def match(self, files: list, verify: str = "stat", match: str = "path") -> tuple[dict[str, CacheEntry], CacheReport]:
        """Usable entries by ``str(path)`` for ``files`` and the report of the others.

        ``match``: ``path`` (by key, :meth:`find`) or ``content`` (by key, then an image no key
        matches by the SHA-1 of its bytes, :meth:`find_content`; each such file is hashed once).
        """
        if match not in ("path", "content"):
            raise ValueError(f"mask_match must be 'path' or 'content', got {match!r}")
        report = CacheReport(total=len(files))
        usable: dict[str, CacheEntry] = {}
        for path in files:
            try:
                kind, entry = self.status(path, verify)
                if kind == "missing" and match == "content":
                    found = self.find_content(file_sha1(path))
                    if found is not None:
                        entry = found[1]
                        kind = "ok" if entry.version == MASK_CACHE_VERSION else "version_mismatch"
            except OSError:
                kind, entry = "missing", None
            report.add(kind, str(path))
            if kind == "ok" and entry is not None:
                usable[str(path)] = entry
        return usable, report

    # ------------------------------------------------------------------ writing
    def write(self, key: str, sha1: str, prompt: str, nouns: list[str], masks: np.ndarray,
              image_size: tuple[int, int], stat=None, rank: int = 0) -> CacheEntry:
        """Store one image's result (the ``.npz`` first, then its journal line).

        ``stat``: the image file's ``os.stat`` (anything with ``st_size``/``st_mtime_ns``) when it was hashed.
        """
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or masks.shape[0] != len(nouns):
            raise ValueError(f"masks must be (len(nouns), h, w); got {masks.shape} for {len(nouns)} nouns")
        name = hashlib.sha1(key.encode()).hexdigest()
        rel = Path("masks") / name[:2] / f"{name[:20]}-{sha1[:12]}.npz"
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.npz")
        np.savez_compressed(tmp, masks=pack_masks(masks), shape=np.asarray(masks.shape, dtype=np.int64),
                            nouns=np.asarray(list(nouns), dtype=str), prompt=np.asarray(prompt), sha1=np.asarray(sha1),
                            image_size=np.asarray(image_size, dtype=np.int64), version=np.asarray(MASK_CACHE_VERSION))
        os.replace(tmp, target)  # atomic: a reader never sees half a file
        self._by_sha1 = None
        entry = CacheEntry(sha1=sha1, file=rel.as_posix(), prompt=prompt, nouns=list(nouns),
                           image_size=[int(image_size[0]), int(image_size[1])],
                           mask_size=[int(masks.shape[1]), int(masks.shape[2])],
                           bytes=int(stat.st_size) if stat else -1, mtime_ns=int(stat.st_mtime_ns) if stat else -1)
        if self._journal is None:
            self._journal = self.root / f"journal-{rank}-{uuid.uuid4().hex[:12]}.jsonl"
        with open(self._journal, "a") as f:
            f.write(json.dumps({"key": key, "entry": asdict(entry)}) + "\n")
            f.flush()
        self.entries[key] = entry
        return entry

    def merge_journals(self) -> int:
        """Fold every journal into ``index.json`` (atomic replace); returns the entry count."""
        journals = sorted(self.root.glob("journal-*.jsonl"))
        self.reload()
        data = {"format": FORMAT, "version": MASK_CACHE_VERSION,
                "entries": {k: asdict(e) for k, e in sorted(self.entries.items())}}
        tmp = self.root / f".{INDEX}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(data, indent=0))
        os.replace(tmp, self.root / INDEX)
        for journal in journals:
            journal.unlink(missing_ok=True)
        self._journal = None
        self.foreign_version = None
        return len(self.entries)
