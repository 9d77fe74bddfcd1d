"""Recursive image listing with an on-disk cache, so big trees are walked once, not per rank and epoch.

Walking LSDIR (85k files) takes seconds on a local disk and much longer on network storage; every
rank of every run doing it at start-up adds up. :func:`index_images` stores each root's sorted list
of image files as JSON in ``cache_dir``, keyed by the root's absolute path and a cheap signature
of the tree: the modification times of the root and of its direct subfolders. Adding, removing or
renaming a file directly in the root or in one of its direct subfolders changes that signature and
rebuilds the list.

Limits: changes two or more levels below the root, and files modified in place, are not detected
(pass ``refresh=True`` or delete the cache file); keep ``cache_dir`` outside the indexed roots. The
first process to miss the cache builds it under an exclusive file lock (POSIX) while others wait and
then read it; the file is written to a temporary name and moved into place with ``os.replace``, so a
reader never sees half a file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from datamodules.imageio import is_image_path

logger = logging.getLogger(__name__)

_VERSION = 1


def index_images(
    roots: Sequence[str | Path] | str | Path, cache_dir: str | Path | None = None, refresh: bool = False
) -> list[Path]:
    """Image files under ``roots`` (recursive, hidden entries skipped), sorted within each root.

    Roots are listed in the order given; a file reachable from two roots appears once. With
    ``cache_dir`` the listing of each root is cached (see the module docstring for when it is
    rebuilt); ``refresh`` forces a rebuild. A missing root raises ``FileNotFoundError``.
    """
    if isinstance(roots, (str, Path)):
        roots = [roots]
    cache = Path(cache_dir).expanduser().resolve() if cache_dir is not None else None
    seen: set[Path] = set()
    out: list[Path] = []
    for root in roots:
        path = Path(root).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        if cache is not None and cache == path:
            raise ValueError(f"cache_dir must not be an indexed root ({path}): writing the cache would invalidate it")
        files = _cached_listing(path, cache, refresh) if cache is not None else _walk(path)
        for rel in files:
            full = path / rel
            if full not in seen:
                seen.add(full)
                out.append(full)
    return out


def tree_signature(root: Path) -> list[list]:
    """Modification times (ns) of ``root`` and its direct, non-hidden subfolders.

    An entry that cannot be followed (a symlink loop, a dangling or unreadable link) is not a
    folder of the tree and is left out (:func:`_walk` reports such entries).
    """
    sig: list[list] = [[".", root.stat().st_mtime_ns]]
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    sig.append([entry.name, entry.stat(follow_symlinks=True).st_mtime_ns])
            except OSError:
                continue
    return sorted(sig)


def _walk(root: Path) -> list[str]:
    """Relative POSIX paths of the image files under ``root``, sorted; follows symlinks, once per real folder.

    Entries that cannot be followed (a symlink loop, a dangling or unreadable link) are left out of
    the listing, counted and reported once: they would only fail to decode later.
    """
    found: list[str] = []
    visited: set[str] = set()
    broken: list[str] = []

    def unreadable(error: OSError) -> None:  # a folder os.walk cannot list (e.g. a linked folder that loops)
        broken.append(str(error.filename or error))

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=unreadable):
        real = os.path.realpath(folder)
        if real in visited:  # a symlink loop or a folder linked twice
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_folder = Path(folder).relative_to(root)
        for name in files:
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            if os.path.islink(path) and not os.path.exists(path):  # loops to itself or points nowhere
                broken.append((rel_folder / name).as_posix())
                continue
            if is_image_path(name):
                found.append((rel_folder / name).as_posix())
    if broken:
        logger.warning("%s: skipped %d entr%s that cannot be followed (symlink loop or unreadable link), e.g. %s",
                       root, len(broken), "y" if len(broken) == 1 else "ies", sorted(broken)[0])
    return sorted(found)


def _cache_file(cache: Path, root: Path) -> Path:
    digest = hashlib.sha1(str(root).encode("utf-8")).hexdigest()[:16]
    return cache / f"images-{digest}.json"


def _read_cache(path: Path, root: Path, signature: list[list]) -> list[str] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable image index cache %s (%s); rebuilding it", path, exc)
        return None
    if data.get("version") != _VERSION or data.get("root") != str(root) or data.get("signature") != signature:
        return None
    files = data.get("files")
    return files if isinstance(files, list) else None


def _write_atomic(path: Path, payload: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` where the platform has ``fcntl`` (else rely on atomic writes)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builders may walk twice, readers still see whole files
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _cached_listing(root: Path, cache: Path, refresh: bool) -> list[str]:
    cache.mkdir(parents=True, exist_ok=True)
    path = _cache_file(cache, root)
    signature = tree_signature(root)
    if not refresh:
        files = _read_cache(path, root, signature)
        if files is not None:
            return files
    with _exclusive_lock(path.with_suffix(".lock")):
        if not refresh:  # another process may have built it while we waited for the lock
            files = _read_cache(path, root, signature)
            if files is not None:
                return files
        files = _walk(root)
        _write_atomic(path, {"version": _VERSION, "root": str(root), "signature": signature, "files": files})
        logger.info("indexed %d images under %s (cache %s)", len(files), root, path)
        return files
