"""Recursive image index with an invalidating on-disk cache shared by concurrent processes."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

import datamodules.file_index as file_index
from datamodules.file_index import index_images


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for rel in ("b.png", "a.JPG", "sub/c.webp", "sub/deeper/d.tif", "z/e.jpeg"):
        _touch(root / rel)
    for rel in ("notes.txt", ".hidden.png", ".cache/f.png", "sub/readme.md"):
        _touch(root / rel)
    return root


def _rel(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root.resolve()).as_posix() for p in paths]


def test_lists_images_recursively_sorted_and_skips_hidden(tree: Path) -> None:
    assert _rel(index_images([tree]), tree) == ["a.JPG", "b.png", "sub/c.webp", "sub/deeper/d.tif", "z/e.jpeg"]
    assert all(p.is_absolute() for p in index_images(str(tree)))


def test_several_roots_keep_their_order_without_duplicates(tree: Path) -> None:
    files = index_images([tree / "z", tree, tree / "sub"])
    assert _rel(files, tree) == ["z/e.jpeg", "a.JPG", "b.png", "sub/c.webp", "sub/deeper/d.tif"]


def test_cache_is_written_and_reused_without_walking(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = index_images([tree], cache_dir=cache)
    (cache_file,) = cache.glob("images-*.json")
    data = json.loads(cache_file.read_text())
    assert data["root"] == str(tree.resolve()) and data["files"] == _rel(first, tree)

    def no_walk(root: Path) -> list[str]:
        raise AssertionError("the tree was walked although the cache is valid")

    monkeypatch.setattr(file_index, "_walk", no_walk)
    assert index_images([tree], cache_dir=cache) == first


@pytest.mark.parametrize("where", ["new.png", "sub/new.png", "z/new.png"])
def test_adding_a_file_at_top_level_or_one_below_rebuilds(tree: Path, tmp_path: Path, where: str) -> None:
    cache = tmp_path / "cache"
    before = index_images([tree], cache_dir=cache)
    _touch(tree / where)
    after = index_images([tree], cache_dir=cache)
    assert _rel(after, tree) == sorted(_rel(before, tree) + [where])


def test_removing_a_file_rebuilds_and_refresh_forces_it(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    index_images([tree], cache_dir=cache)
    (tree / "b.png").unlink()
    assert "b.png" not in _rel(index_images([tree], cache_dir=cache), tree)
    # Two levels down is beyond the signature (documented limit); refresh=True picks it up.
    _touch(tree / "sub" / "deeper" / "late.png")
    assert "sub/deeper/late.png" in _rel(index_images([tree], cache_dir=cache, refresh=True), tree)


def test_corrupt_cache_is_rebuilt(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    expected = index_images([tree], cache_dir=cache)
    (cache_file,) = cache.glob("images-*.json")
    cache_file.write_text("{ truncated")
    assert index_images([tree], cache_dir=cache) == expected
    assert json.loads(cache_file.read_text())["files"] == _rel(expected, tree)


def test_errors_are_clear(tree: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        index_images([tree / "missing"])
    with pytest.raises(ValueError, match="cache_dir must not be an indexed root"):
        index_images([tree], cache_dir=tree)


def _worker(root: str, cache: str, queue: mp.Queue) -> None:
    queue.put([str(p) for p in index_images([root], cache_dir=cache)])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to start processes quickly")
def test_concurrent_processes_share_one_cache(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ctx = mp.get_context("fork")
    queue: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tree), str(cache), queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(r == results[0] for r in results) and len(results[0]) == 5
    assert len(list(cache.glob("images-*.json"))) == 1 and not list(cache.glob("*.tmp"))
