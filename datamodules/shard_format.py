"""The training shard set: HR images (with prompts and TMG masks) packed into litdata chunks.

This format is the contract between ``python -m lit_sr.pack`` (:mod:`datamodules.packing`) and
training with ``data=shards`` (:mod:`datamodules.shard_datamodule`). A shard set is a folder (or an
object-store prefix) that litdata's ``StreamingDataset`` reads:

* ``index.json`` — litdata's chunk index (``chunks``: file, item count, bytes; ``config``);
* ``chunk-<part>-<n>.bin`` — the chunks; sample ``i`` of the set is item ``i`` in chunk order;
* ``lit_sr_shards.json`` — this project's manifest: ``format``, ``version``, ``samples``, ``chunks``,
  ``sources`` (the packed folders), ``masks``/``prompts`` (what was packed), ``skipped`` (unusable
  images left out at packing time) and ``created``.

Each sample is ``{"image": <the file's own encoded bytes>, "meta": <JSON>, "masks": <bytes>}``:
the image is stored as it was (no re-encoding: PNG stays lossless, JPEG is not recompressed) and
decoded in the data-loader workers like a file; ``meta`` holds ``key`` (``<folder name>/<path
inside it>``, the mask cache's key), ``sha1`` of the bytes, ``size`` [H, W], ``prompt``,
``nouns`` and ``mask_shape`` [N, h, w]; ``masks`` is ``numpy.packbits`` of the N flattened bool
masks (empty when the image has none). The sample id used for draws is its index in the set.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit_sr.errors import ConfigError

FORMAT = "lit_sr.shards"
VERSION = 1
MANIFEST = "lit_sr_shards.json"
INDEX = "index.json"


def encode_sample(image: bytes, key: str, sha1: str, size: tuple[int, int], prompt: str = "",
                  nouns: list[str] | None = None, masks: np.ndarray | None = None) -> dict:
    """One sample as stored in a chunk (every sample has the same fields and types)."""
    masks = np.zeros((0, 1, 1), dtype=bool) if masks is None else np.asarray(masks, dtype=bool)
    nouns = list(nouns or [])
    if masks.ndim != 3 or masks.shape[0] != len(nouns):
        raise ValueError(f"{key}: masks must be (len(nouns), h, w); got {masks.shape} for {len(nouns)} nouns")
    meta = {"key": key, "sha1": sha1, "size": [int(size[0]), int(size[1])], "prompt": prompt, "nouns": nouns,
            "mask_shape": list(masks.shape)}
    packed = np.packbits(masks.reshape(masks.shape[0], -1), axis=1).tobytes() if len(nouns) else b""
    return {"image": bytes(image), "meta": json.dumps(meta), "masks": packed}


@dataclass
class Sample:
    """A decoded sample record (the image stays encoded until a worker crops it)."""

    image: bytes
    key: str
    sha1: str
    size: tuple[int, int]
    prompt: str
    nouns: list[str]
    mask_shape: tuple[int, int, int]
    packed_masks: bytes

    @classmethod
    def from_item(cls, item: dict) -> Sample:
        meta = json.loads(item["meta"])
        return cls(image=item["image"], key=meta["key"], sha1=meta["sha1"], size=tuple(meta["size"]),
                   prompt=meta.get("prompt", ""), nouns=list(meta.get("nouns", [])),
                   mask_shape=tuple(meta.get("mask_shape", (0, 1, 1))), packed_masks=item.get("masks", b""))

    def masks(self) -> np.ndarray:
        """The bool ``(N, h, w)`` masks of the whole image."""
        n, h, w = (int(v) for v in self.mask_shape)
        if n == 0:
            return np.zeros((0, h, w), dtype=bool)
        packed = np.frombuffer(self.packed_masks, dtype=np.uint8).reshape(n, -1)
        return np.unpackbits(packed, axis=1, count=h * w).reshape(n, h, w).astype(bool)


def open_reader(root: str, cache_dir: str | None = None):
    """litdata's reader of the set and its sample count (``len()`` of the reader is one rank's share under DDP)."""
    from litdata import StreamingDataset

    reader = StreamingDataset(str(root), cache_dir=cache_dir)
    return reader, int(sum(end - start for start, end in reader.region_of_interest))


def is_remote(root: str) -> bool:
    """True for an object-store URL (``s3://…``, ``gs://…``), False for a local folder."""
    return "://" in str(root)


def read_manifest(root: str) -> dict:
    """The manifest of a local shard set (one line when it is not one); {} for a remote set."""
    if is_remote(root):
        return {}
    path = Path(root).expanduser()
    if not (path / INDEX).is_file():
        unfinished = (path / ".pack").is_dir()
        hint = " (an interrupted pack: run the same pack command again to finish it)" if unfinished else ""
        raise ConfigError(f"data.shards: {path} is not a packed shard set (no {INDEX}){hint}; "
                          "pack image folders with python -m lit_sr.pack")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ConfigError(f"data.shards: {path} has no {MANIFEST}: it was not written by "
                          "python -m lit_sr.pack") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.shards: {path / MANIFEST} is unreadable ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ConfigError(f"data.shards: {path} holds format {manifest.get('format')!r} version "
                          f"{manifest.get('version')!r}; this lit_sr reads {FORMAT!r} version {VERSION} (re-pack it)")
    return manifest


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary sibling, then a rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
