"""Write the self-contained studio page, plus the exact 8-bit rules it blends with.

The page (``template.html``) does all blending in the browser from embedded PNGs; these Python
twins use the same float64 operations in the same order and the same rounding, so a CLI (or a
test) reproduces every pixel the page shows or exports:

* endpoint blend: ``floor((1 − γ)·x_fid + γ·x_real + 0.5)`` per channel (round half up), with γ a
  float in [0, 1] or a γ map ``g`` (H×W uint8) standing for ``g / 255``;
* knob interpolation between two neighbouring computed settings: the same rule with weight w;
* t × γ pad: each neighbouring row is blended at γ first (two exact 8-bit images, what the page
  shows on those rows), then the two rows are interpolated.

The page's γ slider moves in steps of 1/1000 and its knob slider in steps of 1/100 of the way
between two computed settings; a painted γ map is quantised to ``round(Γ·255)`` before use.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import numbers
import os
import re
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["blend_uint8", "interpolate_uint8", "write_page"]


def _mix_round(a: np.ndarray, b: np.ndarray, w: float | np.ndarray) -> np.ndarray:
    """``floor((1 − w)·a + w·b + 0.5)`` in float64, the operation order of the page's tables."""
    out = np.floor((1.0 - w) * a.astype(np.float64) + w * b.astype(np.float64) + 0.5)
    return np.clip(out, 0, 255).astype(np.uint8)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    for name, x in (("first image", a), ("second image", b)):
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"{name} must be an H×W×3 uint8 array, got {_describe(x)}")
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")


def blend_uint8(x_fid: np.ndarray, x_real: np.ndarray, gamma: float | np.ndarray) -> np.ndarray:
    """The page's endpoint blend; ``gamma`` is a float in [0, 1] or an H×W uint8 γ map (g / 255)."""
    _check_pair(x_fid, x_real)
    if isinstance(gamma, np.ndarray):
        if gamma.dtype != np.uint8 or gamma.shape != x_fid.shape[:2]:
            h, w = x_fid.shape[:2]
            raise ValueError(f"gamma map must be an {h}×{w} uint8 array, got {_describe(gamma)}")
        return _mix_round(x_fid, x_real, (gamma.astype(np.float64) / 255.0)[..., None])
    gamma = float(gamma)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    return _mix_round(x_fid, x_real, gamma)


def interpolate_uint8(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """The page's rule between two neighbouring knob images: weight ``w`` ∈ [0, 1] towards ``b``."""
    _check_pair(a, b)
    w = float(w)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"interpolation weight must lie in [0, 1], got {w}")
    return _mix_round(a, b, w)


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"shape {x.shape} dtype {x.dtype}"
    if isinstance(x, tuple | list):
        return f"{type(x).__name__} of length {len(x)}"
    return type(x).__name__


def _png_uri(x: np.ndarray) -> str:
    # No colour chunks (gAMA/iCCP/sRGB): the browser then has nothing to colour-manage, and the page
    # also decodes with colour conversion off, so it reads back exactly these 8-bit values.
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(x), "RGB").save(buf, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _check_knobs(name: str, entries: list, n_images: int, shape: tuple[int, ...]) -> None:
    if len(entries) < 2:
        raise ValueError(f"{name} needs at least two knob settings, got {len(entries)}")
    previous = -math.inf
    for k, entry in enumerate(entries):
        if not isinstance(entry, tuple | list) or len(entry) != 2 + n_images:
            fields = "label, value" + ", image" * n_images
            raise ValueError(f"{name}[{k}] must be a tuple ({fields}), got {_describe(entry)}")
        label, value, *images = entry
        if not isinstance(label, str):
            raise ValueError(f"{name}[{k}] label must be a str, got {type(label).__name__}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name}[{k}] value must be a finite number, got {value!r}")
        if value <= previous:
            raise ValueError(f"{name} values must be strictly ascending, got {value!r} after {previous!r}")
        previous = value
        for image in images:
            _check_image(f"{name}[{k}] ({label})", image, shape)


def _check_image(name: str, x: object, shape: tuple[int, ...]) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.shape != shape:
        raise ValueError(f"{name} must be a uint8 array of shape {shape} like `before`, got {_describe(x)}")


def write_page(
    path: str | Path,
    *,
    before: np.ndarray,
    endpoints: tuple[np.ndarray, np.ndarray] | None = None,
    knob_images: list[tuple[str, float, np.ndarray]] | None = None,
    knob_endpoints: list[tuple[str, float, np.ndarray, np.ndarray]] | None = None,
    title: str = "lit_sr studio",
    meta: dict[str, str] | None = None,
    knob_name: str = "t",
) -> Path:
    """Write one self-contained HTML page (no server, no network) and return its path.

    ``before`` is the bicubic-upscaled LQ for the split view. ``endpoints`` is ``(x_fid, x_real)``
    (γ slider and γ-map brush); ``knob_images`` is ``(label, value, image)`` per computed knob setting,
    values ascending (knob slider); ``knob_endpoints`` is ``(label, value, x_fid, x_real)`` per
    setting (t × γ pad, brush). Give any non-empty combination; the page offers one tab per mode.
    All images are H×W×3 uint8 of one size. The file is written atomically (temp file + rename).
    """
    if not isinstance(before, np.ndarray) or before.dtype != np.uint8 or before.ndim != 3 or before.shape[2] != 3:
        raise ValueError(f"before must be an H×W×3 uint8 array, got {_describe(before)}")
    shape = before.shape
    if endpoints is None and not knob_images and not knob_endpoints:
        raise ValueError("give at least one of endpoints, knob_images or knob_endpoints")
    data: dict = {
        "title": title,
        "meta": {str(k): str(v) for k, v in (meta or {}).items()},
        "width": shape[1],
        "height": shape[0],
        "knobName": knob_name,
        "before": _png_uri(before),
        "endpoints": None,
        "knob": None,
        "pad": None,
    }
    if endpoints is not None:
        if not isinstance(endpoints, tuple | list) or len(endpoints) != 2:
            raise ValueError("endpoints must be a pair (x_fid, x_real)")
        for name, x in zip(("endpoints x_fid", "endpoints x_real"), endpoints):
            _check_image(name, x, shape)
        data["endpoints"] = {"fid": _png_uri(endpoints[0]), "real": _png_uri(endpoints[1])}
    if knob_images:
        _check_knobs("knob_images", knob_images, 1, shape)
        data["knob"] = [{"label": l, "value": float(v), "image": _png_uri(x)} for l, v, x in knob_images]
    if knob_endpoints:
        _check_knobs("knob_endpoints", knob_endpoints, 2, shape)
        data["pad"] = [
            {"label": l, "value": float(v), "fid": _png_uri(f), "real": _png_uri(r)} for l, v, f, r in knob_endpoints
        ]

    # "</" would end the <script> block that holds the JSON; "<\/" parses to the same string.
    values = {"TITLE": html.escape(title), "DATA": json.dumps(data, allow_nan=False).replace("</", "<\\/")}
    template = resources.files("lit_sr.studio").joinpath("template.html").read_text(encoding="utf-8")
    # One pass, so text substituted for one placeholder is never scanned for another.
    page = re.sub(r"\{\{(TITLE|DATA)\}\}", lambda m: values[m[1]], template)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the page is a plain shareable document
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
