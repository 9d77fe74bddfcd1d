"""Path-typed constructor arguments that the config layer checks before anything is built.

A component annotates an argument with :data:`LocalDir` or :data:`LocalFile`; at compose time a
set value that does not exist ends the run with one line naming the key
(``backbone.path: directory not found: /models/sd21``), instead of a traceback after minutes
of model building. The component still checks on use, for callers that skip the config.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated


@dataclass(frozen=True)
class MustExist:
    kind: str  # "directory" or "file"
    label: str | None = None  # what the message calls it (default: the kind), e.g. "MEM file"

    def problem(self, value: object) -> str | None:
        """Why ``value`` is not an existing path of this kind (None: it is, or it is unset)."""
        if value in (None, "", "???") or not isinstance(value, (str, Path)):
            return None
        path = Path(value).expanduser()
        ok = path.is_dir() if self.kind == "directory" else path.is_file()
        return None if ok else f"{self.label or self.kind} not found: {value}"


LocalDir = Annotated[str, MustExist("directory")]
LocalFile = Annotated[str, MustExist("file")]
