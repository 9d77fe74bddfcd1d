"""Write the self-contained studio page, plus the exact 8-bit rules it blends with.

The page (``template.html``) does all blending in the browser from embedded PNGs, with exactly
the 8-bit rules of :mod:`lit_sr.model.blend` (``blend_uint8``, ``interpolate_uint8``): the same
float64 operations in the same order and the same rounding, so ``python -m lit_sr.blend`` (or a
test) reproduces every pixel the page shows or exports. The t × γ pad blends each neighbouring
row at γ first (two exact 8-bit images, what the page shows on those rows), then interpolates.

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

from lit_sr.model.blend import describe as _describe

__all__ = ["write_page"]


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
