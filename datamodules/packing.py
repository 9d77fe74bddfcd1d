"""Pack HR image folders into a training shard set (:mod:`datamodules.shard_format`), in parallel, resumably.

The file list is planned once (sorted, as :func:`datamodules.file_index.index_images` lists it)
and cut into *parts* of ``part_size`` images. Worker processes write one part each into a private
folder with litdata's ``BinaryWriter``, move its chunks into the set and record the part
(``.pack/part-NNNNN.json``, written last and atomically): a part is done exactly when its record
exists. Re-running the same command after a kill redoes only the parts without a record; when
every part is done the records are merged, in plan order, into ``index.json`` and the manifest.

Each image is decoded once while packing, so an unusable file (undecodable, above ``max_pixels``,
smaller than ``min_size``) is left out with a logged, counted line instead of failing a training
run later. TMG masks and prompts come from a mask cache (matched like training matches it);
prompts may also come from a stem → prompt mapping (the text conditioner's prompt file).
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from datamodules.file_index import index_images
from datamodules.imageio import DEFAULT_MAX_PIXELS, decode_image
from datamodules.mask_cache import MaskCache, image_key
from datamodules.shard_format import FORMAT, INDEX, MANIFEST, VERSION, encode_sample, write_json_atomic
from lit_sr.errors import ConfigError, ImageLoadError

log = logging.getLogger(__name__)

WORK = ".pack"


@dataclass
class PackReport:
    """What a pack command did: samples in the set, images left out, parts written now and before."""

    samples: int = 0
    skipped: int = 0
    parts: int = 0
    parts_written: int = 0
    chunks: int = 0
    skipped_examples: list[str] = field(default_factory=list)


@dataclass
class PackOptions:
    """Everything a worker needs besides its part (picklable)."""

    chunk_bytes: str = "64MB"
    min_size: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    mask_cache: str | None = None
    verify: str = "stat"
    prompts: dict[str, str] | None = None


def plan_files(input_dirs: list[str]) -> list[tuple[str, str]]:
    """``(key, path)`` of every image under ``input_dirs``, in packing order (one line on a bad folder)."""
    out, owner = [], {}
    for root in input_dirs:
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise ConfigError(f"input_dirs: folder not found: {root}")
        resolved = root_path.resolve()
        if owner.setdefault(resolved.name, resolved) != resolved:
            raise ConfigError(f"input_dirs: {owner[resolved.name]} and {root} share the folder name "
                              f"{resolved.name!r}; sample keys would collide (rename or link one of them)")
        out += [(image_key(p, resolved), str(p)) for p in index_images([resolved])]
    if not out:
        raise ConfigError(f"input_dirs: no image files found under {', '.join(map(str, input_dirs))}")
    return out


# ------------------------------------------------------------------------------ workers

_CACHE: dict[str, MaskCache] = {}  # one mask cache index per worker process, read once
_OPTS = PackOptions()  # set once per worker process (a large prompt mapping is not sent with every part)


def _init_worker(opts: PackOptions) -> None:
    global _OPTS
    _OPTS = opts


def _annotation(key: str, path: str, opts: PackOptions) -> tuple[str, list[str], object]:
    """``(prompt, nouns, masks)`` of one image from the mask cache, else its prompt from the mapping."""
    prompt = (opts.prompts or {}).get(Path(path).stem, "")
    if not opts.mask_cache:
        return prompt, [], None
    cache = _CACHE.get(opts.mask_cache)
    if cache is None:
        cache = _CACHE[opts.mask_cache] = MaskCache(opts.mask_cache)
    try:
        kind, entry = cache.status(path, opts.verify)
    except OSError:
        kind, entry = "missing", None
    if kind != "ok" or entry is None:
        return prompt, [], None
    nouns, cached_prompt, masks = cache.load(entry)
    return cached_prompt or prompt, nouns, masks


def _read(key: str, path: str, opts: PackOptions) -> dict:
    """One image as a shard sample; ImageLoadError when it is unusable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    arr = decode_image(path, opts.max_pixels, data=data)  # decoded once here so training never meets a bad one
    h, w = arr.shape[:2]
    if opts.min_size and min(h, w) < opts.min_size:
        raise ImageLoadError(f"{path}: {w}x{h} is smaller than min_size={opts.min_size}")
    prompt, nouns, masks = _annotation(key, path, opts)
    return encode_sample(data, key, hashlib.sha1(data).hexdigest(), (h, w), prompt, nouns, masks)


def _pack_part(job: tuple[int, list[tuple[str, str]], str]) -> dict:
    """Write part ``index`` of the plan; returns its record (also written to ``.pack/part-NNNNN.json``)."""
    from litdata.streaming.writer import BinaryWriter

    index, files, out_dir = job
    opts = _OPTS
    out, work = Path(out_dir), Path(out_dir) / WORK
    tmp = work / f"tmp-{index:05d}-{uuid.uuid4().hex[:8]}"
    writer = BinaryWriter(str(tmp), chunk_bytes=opts.chunk_bytes)
    written, skipped = 0, []
    for key, path in files:
        try:
            sample = _read(key, path, opts)
        except ImageLoadError as exc:
            skipped.append(str(exc))
            log.warning("pack: skipping %s", exc)
            continue
        writer[written] = sample
        written += 1
    writer.done()
    chunks, config = [], None
    local_index = tmp / f"0.{INDEX}"
    if local_index.is_file():
        data = json.loads(local_index.read_text())
        config = data["config"]
        for n, chunk in enumerate(data["chunks"]):
            name = f"chunk-{index}-{n}.bin"
            os.replace(tmp / chunk["filename"], out / name)  # a redone part overwrites its own leftovers
            chunks.append({**chunk, "filename": name})
    record = {"part": index, "samples": written, "skipped": skipped, "chunks": chunks, "config": config}
    write_json_atomic(work / f"part-{index:05d}.json", record)  # the part is done from here on
    shutil.rmtree(tmp, ignore_errors=True)
    return record


# ------------------------------------------------------------------------------ the job

def pack(input_dirs: list[str], output_dir: str, workers: int = 2, part_size: int = 256,
         opts: PackOptions | None = None) -> PackReport:
    """Pack ``input_dirs`` into the shard set ``output_dir`` (see the module docstring)."""
    opts = opts or PackOptions()
    if part_size < 1 or workers < 0:
        raise ConfigError(f"part_size must be >= 1 and workers >= 0 (got {part_size}, {workers})")
    if opts.mask_cache:
        MaskCache(opts.mask_cache)  # one line now if it is missing, not one per worker
    out = Path(output_dir).expanduser()
    work = out / WORK
    files = plan_files(input_dirs)
    plan = {"files": [list(f) for f in files], "part_size": int(part_size), "chunk_bytes": str(opts.chunk_bytes),
            "min_size": opts.min_size, "mask_cache": opts.mask_cache, "prompts": bool(opts.prompts)}
    if (out / MANIFEST).is_file() and not work.is_dir():
        raise ConfigError(f"output_dir: {out} already holds a packed shard set; pack into a new folder")
    if out.is_dir() and any(out.iterdir()) and not (work / "plan.json").is_file():
        raise ConfigError(f"output_dir: {out} is not empty and holds no unfinished pack; use a new folder")
    work.mkdir(parents=True, exist_ok=True)
    plan_path = work / "plan.json"
    if plan_path.is_file():
        if json.loads(plan_path.read_text()) != plan:
            raise ConfigError(f"output_dir: {out} holds an unfinished pack of other files or settings; finish it "
                              "with its own command, or pack into a new folder")
        log.info("pack: resuming the unfinished pack in %s", out)
    else:
        write_json_atomic(plan_path, plan)
    for leftover in work.glob("tmp-*"):  # a killed worker's private folder
        shutil.rmtree(leftover, ignore_errors=True)
    parts = [files[i:i + part_size] for i in range(0, len(files), part_size)]
    todo = [(i, part, str(out)) for i, part in enumerate(parts) if not (work / f"part-{i:05d}.json").is_file()]
    log.info("pack: %d images in %d parts, %d to write with %d worker(s)", len(files), len(parts), len(todo), workers)
    start = time.monotonic()
    if workers == 0:
        _init_worker(opts)
        for job in todo:
            _log_part(_pack_part(job), len(parts))
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(opts,))
        try:
            for record in pool.imap_unordered(_pack_part, todo):
                _log_part(record, len(parts))
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.close()  # workers exit on their own: terminating them would leak litdata's import-time lock
            pool.join()
    report = _merge(out, len(parts))
    report.parts_written = len(todo)
    log.info("pack: %d samples in %d chunks (%d images left out) in %.1f s", report.samples, report.chunks,
             report.skipped, time.monotonic() - start)
    return report


def _log_part(record: dict, total: int) -> None:
    log.info("pack: part %d/%d done: %d images (%d left out)", record["part"] + 1, total, record["samples"],
             len(record["skipped"]))


def _merge(out: Path, n_parts: int) -> PackReport:
    """Every part record, in plan order, into ``index.json`` and the manifest; then the work folder goes."""
    work = out / WORK
    plan = json.loads((work / "plan.json").read_text())
    records = [json.loads((work / f"part-{i:05d}.json").read_text()) for i in range(n_parts)]
    chunks = [c for r in records for c in r["chunks"]]
    configs = [r["config"] for r in records if r["config"] is not None]
    report = PackReport(samples=sum(r["samples"] for r in records), parts=n_parts, chunks=len(chunks),
                        skipped=sum(len(r["skipped"]) for r in records))
    report.skipped_examples = [s for r in records for s in r["skipped"]][:3]
    if not chunks:
        raise ConfigError(f"input_dirs: none of the {len(plan['files'])} images is usable (e.g. "
                          f"{report.skipped_examples[0] if report.skipped_examples else '?'})")
    if any(c.get("data_format") != configs[0].get("data_format") for c in configs):
        raise ConfigError("pack: parts were written with different sample layouts; pack into a new folder")
    write_json_atomic(out / INDEX, {"chunks": chunks, "config": configs[0], "updated_at": str(time.time())})
    roots = sorted({k.split("/", 1)[0] for k, _ in plan["files"]})
    write_json_atomic(out / MANIFEST, {
        "format": FORMAT, "version": VERSION, "samples": report.samples, "chunks": report.chunks,
        "sources": roots, "masks": plan["mask_cache"] is not None, "prompts": plan["prompts"],
        "skipped": report.skipped, "min_size": plan["min_size"], "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    shutil.rmtree(work, ignore_errors=True)
    return report
