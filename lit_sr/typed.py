"""Typed config nodes with one-line errors: OmegaConf does the checking, this names the key.

OmegaConf reports a failing key relative to the node it was checking, and loses list indices
when a whole tree is merged at once; the helpers below check dataclass-typed lists and mappings
element by element and turn every OmegaConf or ``__post_init__`` error into a one-line
:class:`~lit_sr.errors.ConfigError` that names the full key.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lit_sr.errors import ConfigError, FieldError


def config_error_line(exc: BaseException, prefix: str = "") -> str:
    """One line for an error found while checking the config node at ``prefix``."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

    if isinstance(exc, FieldError):
        return exc.at(prefix)
    full = getattr(exc, "full_key", None)
    # A node checked where it sits in the whole config already has the absolute key (backbone.path,
    # not path): prefix only relative keys, or the hint would name backbone.backbone.path.
    absolute = bool(full) and bool(prefix) and (full == prefix or str(full).startswith((f"{prefix}.", f"{prefix}[")))
    key = full if absolute else (f"{prefix}.{full}" if prefix and full else (full or prefix))
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        return f"unknown config key '{key}'"
    if isinstance(exc, MissingMandatoryValue):
        return f"missing value for '{key}' (set it on the command line: {key}=...)"
    return f"bad value for '{key}': {first}"


def _element_schema(annotation: Any) -> tuple[str, type] | None:
    """("list" | "dict", dataclass) for list[DC] / dict[str, DC] annotations (Optional allowed)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        annotation, args = args[0], list(typing.get_args(args[0]))
    origin = typing.get_origin(annotation)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return "list", args[0]
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return "dict", args[1]
    return None


def merge_checked(schema: type, node: Any, key: str = "") -> DictConfig:
    """``node`` merged into ``schema`` (keys and types checked); errors name the full key."""
    if isinstance(node, (DictConfig, dict)):
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            value = node.get(f.name) if f.name in node else None
            element = _element_schema(hints.get(f.name))
            if element is None or value is None:
                continue
            kind, inner = element
            items = enumerate(value) if kind == "list" else value.items()
            for k, item in items:
                sub = f"{key}.{f.name}" if key else f.name
                merge_checked(inner, item, f"{sub}[{k}]" if kind == "list" else f"{sub}.{k}")
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as exc:
        raise ConfigError(config_error_line(exc, key)) from None


def to_object(node: Any, key: str) -> Any:
    """``OmegaConf.to_object`` whose errors name the innermost failing node (``stages[1].merge ...``)."""
    if not isinstance(node, (DictConfig, ListConfig)):
        return node
    for k in (node.keys() if isinstance(node, DictConfig) else range(len(node))):
        if OmegaConf.is_missing(node, k):
            continue  # reported below with its key
        child = node[k]
        if isinstance(child, (DictConfig, ListConfig)):
            to_object(child, f"{key}.{k}" if isinstance(node, DictConfig) else f"{key}[{k}]")
    try:
        return OmegaConf.to_object(node)
    except FieldError as exc:
        raise ConfigError(exc.at(key)) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(config_error_line(exc, key)) from None
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"bad value in '{key}': {first}") from None


def typed(schema: type, node: Any, key: str = "") -> Any:
    """``node`` as an instance of ``schema``: merged, checked and converted (one-line errors)."""
    return to_object(merge_checked(schema, node, key), key)


# ------------------------------------------------------------------------------ constraints

@dataclass(frozen=True)
class MustExist:
    """``Annotated[str, MustExist("file")]``: a set value must be an existing file (or directory).

    Checked at compose time, so a wrong path ends the run with one line naming the key
    (``backbone.path: directory not found: /models/sd21``) before minutes of model building. The
    component still checks on use, for callers that skip the config.
    """

    kind: str  # "directory" or "file"
    label: str | None = None  # what the message calls it (default: the kind), e.g. "MEM file"

    def problem(self, value: object) -> str | None:
        if value in (None, "", "???") or not isinstance(value, (str, Path)):
            return None
        path = Path(value).expanduser()
        ok = path.is_dir() if self.kind == "directory" else path.is_file()
        return None if ok else f"{self.label or self.kind} not found: {value}"


@dataclass(frozen=True)
class Range:
    """``Annotated[int, Range(min=1)]``: a set value must lie in [min, max] (checked at compose time)."""

    min: float | None = None
    max: float | None = None

    def problem(self, value: object) -> str | None:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            lo = "-inf" if self.min is None else f"{self.min:g}"
            hi = "inf" if self.max is None else f"{self.max:g}"
            return f"{value!r} is outside [{lo}, {hi}]"
        return None


LocalDir = Annotated[str, MustExist("directory")]
LocalFile = Annotated[str, MustExist("file")]
Positive = Annotated[int, Range(min=1)]
NonNegative = Annotated[int, Range(min=0)]
Fraction = Annotated[float, Range(min=0.0, max=1.0)]


def constraints_of(annotation: Any) -> list:
    """Every :class:`MustExist`/:class:`Range` marker inside an annotation (``list[LocalDir] | None`` too)."""
    found = [m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, (MustExist, Range))]
    for arg in typing.get_args(annotation):
        found += constraints_of(arg)
    return found


def check_constraints(markers: list, value: Any) -> str | None:
    """The first problem of ``value`` (or of any element, for lists) under ``markers``."""
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    for marker in markers:
        for v in values:
            problem = marker.problem(v)
            if problem:
                return problem
    return None
