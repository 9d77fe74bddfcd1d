"""User-supplied tags per image from a CSV or JSON file.

* CSV: two columns, ``image,tags`` (a header row with those names is optional); ``tags`` is one
  comma-separated string (quote it), e.g. ``astronaut.png,"person, flag, rocket"``.
* JSON: an object ``{image: "person, flag" | ["person", "flag"]}``.

``image`` is matched against the image path's suffixes, longest first (``train/astronaut.png``,
then ``astronaut.png``), and finally its stem (``astronaut``): the most specific key listed wins.
Images the file does not list get no tags (counted and warned about).
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import torch

from lit_sr.errors import ConfigError
from lit_sr.tagging.base import Tagger, normalize_tags

log = logging.getLogger(__name__)


def read_tag_file(path: str | Path) -> dict[str, list[str]]:
    """``{key: tags}`` from a CSV or JSON tag file; one-line errors for unreadable files."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"tagger.path: tag file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    table: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"tagger.path: {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"tagger.path: {path} must hold a JSON object {{image: tags}}")
        for key, tags in data.items():
            if not isinstance(tags, (str, list)):
                raise ConfigError(f"tagger.path: {path}: tags of {key!r} must be a string or a list")
            table[str(key)] = normalize_tags(tags)
        return table
    rows = list(csv.reader(text.splitlines()))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["image", "tags"]:
        rows = rows[1:]
    for n, row in enumerate(rows, 1):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 2:
            raise ConfigError(f"tagger.path: {path} line {n}: expected 'image,tags'")
        # Unquoted tags spill into extra columns; they are still tags.
        table[row[0].strip()] = normalize_tags(",".join(row[1:]))
    return table


class FileTagger(Tagger):
    """Tags looked up per image in a CSV/JSON file (see the module docstring)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = str(path)
        self.table = read_tag_file(path)
        self.unlisted = 0

    def lookup(self, path: str) -> list[str] | None:
        p = Path(path)
        for n in range(len(p.parts), 0, -1):  # longest relative suffix first: most specific key
            key = Path(*p.parts[-n:]).as_posix()
            if key in self.table:
                return self.table[key]
        return self.table.get(p.stem)

    def tag(self, images: list[torch.Tensor], paths: list[str]) -> list[list[str]]:
        out = []
        for path in paths:
            tags = self.lookup(path)
            if tags is None:
                self.unlisted += 1
                log.warning("tagger=file: %s is not listed in %s; it gets no tags", path, self.path)
                tags = []
            out.append(tags)
        return out
