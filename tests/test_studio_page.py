"""The studio page in a real headless Chromium: exact canvas pixels against the Python twins, the
γ-map brush and its exports, knob scrub and t × γ pad, split view, 1:1 zoom, and no network use."""
from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_sr.model.blend import blend_uint8, interpolate_uint8
from lit_sr.studio.page import write_page

CHROMIUM = os.environ.get("LIT_SR_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium phones home at start-up; the network is closed
# on CI machines and those requests would also pollute the no-network check.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
H, W = 96, 128
VIEWPORT = {"width": 1280, "height": 800}

# Canvas pixels as base64 (a plain JS array of 50k numbers would be slow to pass back).
READ_CANVAS = """() => {
  const c = document.getElementById("view"), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let s = "";
  for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
  return btoa(s);
}"""
READ_MAP = """() => {
  const g = studio.gammaMap();
  let s = "";
  for (let i = 0; i < g.length; i += 0x8000) s += String.fromCharCode.apply(null, g.subarray(i, i + 0x8000));
  return btoa(s);
}"""


# ------------------------------------------------------------------------------------------------
# Test images: structured and unlike each other, so a wrong source or weight is visible and counted.
def _grid() -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:H, 0:W]


def gradient() -> np.ndarray:
    y, x = _grid()
    return np.stack([x * 255 // (W - 1), y * 255 // (H - 1), np.full_like(x, 128)], -1).astype(np.uint8)


def checkerboard(cell: int = 8) -> np.ndarray:
    y, x = _grid()
    on = ((x // cell + y // cell) % 2).astype(bool)[..., None]
    return np.where(on, np.array([235, 40, 200], np.uint8), np.array([20, 205, 190], np.uint8)).astype(np.uint8)


def stripes() -> np.ndarray:
    y, _ = _grid()
    return np.repeat(((y // 6) % 2 * 120 + 60).astype(np.uint8)[..., None], 3, -1)


def rings(phase: float, tint: tuple[float, float, float]) -> np.ndarray:
    y, x = _grid()
    r = np.hypot(x - W / 2, y - H / 2)
    v = 0.5 + 0.5 * np.cos(r / 4.0 + phase)
    return np.clip(np.round(v[..., None] * np.array(tint) * 255), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One Chromium for the session, with a fresh profile; missing pieces fail with the fix."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "playwright is missing: pip install 'playwright==1.64.1', then run `bash scripts/setup_browser.sh`",
            pytrace=False,
        )
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `bash scripts/setup_browser.sh`", pytrace=False)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            viewport=VIEWPORT, device_scale_factor=1, accept_downloads=True,
        )
        yield context
        context.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = os.environ.get("LIT_SR_ARTIFACTS")
    out = Path(root) / "studio" if root else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


class Studio:
    """A loaded studio page plus every request it made (and when) and its script errors."""

    def __init__(self, context, path: Path) -> None:
        self.page = context.new_page()
        self.requests: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.phase = "navigation"
        self.page.on("request", lambda r: self.requests.append((self.phase, r.url)))
        self.page.on("requestfailed", lambda r: self.requests.append((self.phase, f"FAILED {r.url}")))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(path.as_uri())
        self.page.wait_for_function("document.body.dataset.ready === '1' || !!document.getElementById('error')")
        assert not self.page.locator("#error").count(), self.page.locator("#error").text_content()
        self.w, self.h = self.page.evaluate("(c => [c.width, c.height])(document.getElementById('view'))")
        self.phase = "interaction"

    def settle(self) -> None:
        self.page.evaluate("studio.settled()")

    def fill(self, selector: str, value: int) -> None:
        self.page.locator(selector).fill(str(value))
        self.settle()

    def canvas(self) -> np.ndarray:
        """The displayed canvas (RGB), after any pending redraw."""
        self.settle()
        raw = base64.b64decode(self.page.evaluate(READ_CANVAS))
        px = np.frombuffer(raw, np.uint8).reshape(self.h, self.w, 4)
        assert (px[..., 3] == 255).all(), "the displayed canvas must stay opaque"
        return px[..., :3]

    def gamma_map(self) -> np.ndarray:
        self.settle()
        return np.frombuffer(base64.b64decode(self.page.evaluate(READ_MAP)), np.uint8).reshape(self.h, self.w)

    def rect(self, selector: str = "#view") -> dict[str, float]:
        return self.page.locator(selector).bounding_box()

    def client(self, ix: float, iy: float) -> tuple[float, float]:
        """Screen point of image coordinates (pixel centres at +0.5)."""
        r = self.rect()
        return r["x"] + ix * r["width"] / self.w, r["y"] + iy * r["height"] / self.h

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 12) -> None:
        m = self.page.mouse
        m.move(*start)
        m.down()
        m.move(*end, steps=steps)
        m.up()
        self.settle()

    def download(self, selector: str, path: Path) -> tuple[str, np.ndarray]:
        with self.page.expect_download() as info:
            self.page.locator(selector).click()
        info.value.save_as(path)
        with Image.open(path) as im:
            return im.mode, np.asarray(im).copy()

    def shot(self, path: Path) -> None:
        self.settle()
        self.page.screenshot(path=str(path))

    def close(self) -> None:
        assert not self.errors, self.errors
        self.page.close()


@pytest.fixture
def open_studio(browser) -> Iterator:
    pages: list[Studio] = []

    def _open(path: Path) -> Studio:
        pages.append(Studio(browser, path))
        return pages[-1]

    yield _open
    for s in pages:
        s.close()


# ------------------------------------------------------------------------------------------------
# No browser needed.
def test_rounding_rule_is_half_up_in_float64():
    a = np.zeros((1, 1, 3), np.uint8)
    b = np.full((1, 1, 3), 1, np.uint8)
    assert blend_uint8(a, b, 0.5)[0, 0, 0] == 1  # np.round would give 0 (half to even)
    assert interpolate_uint8(b * 2, b * 5, 0.5)[0, 0, 0] == 4  # 3.5 -> 4
    g = np.array([[128]], np.uint8)  # 128/255 of the way from 0 to 255 is exactly 128
    assert blend_uint8(a, b * 255, g)[0, 0, 0] == 128
    assert (blend_uint8(gradient(), checkerboard(), 0.0) == gradient()).all()
    assert (blend_uint8(gradient(), checkerboard(), 1.0) == checkerboard()).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "at least one of"),
        ({"endpoints": (gradient(), checkerboard()[:-1])}, "x_real must be a uint8 array of shape"),
        ({"endpoints": (gradient().astype(np.float32), checkerboard())}, "x_fid must be a uint8 array"),
        ({"knob_images": [("t=50", 50, gradient())]}, "at least two knob settings"),
        ({"knob_images": [("t=100", 100, gradient()), ("t=50", 50, checkerboard())]}, "strictly ascending"),
        ({"knob_images": [("t=50", 50, gradient()), ("t=100", math.nan, checkerboard())]}, "finite number"),
        ({"knob_endpoints": [("a", 1, gradient()), ("b", 2, gradient())]}, "tuple (label, value, image, image)"),
    ],
)
def test_write_page_rejects_bad_input(tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        write_page(tmp_path / "p.html", before=stripes(), **kwargs)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir()), "nothing is written when the input is rejected"


def test_page_is_self_contained(tmp_path: Path):
    text = write_page(tmp_path / "p.html", before=stripes(), endpoints=(gradient(), checkerboard())).read_text("utf-8")
    assert "http:" not in text and "https:" not in text
    assert ' src="' not in text and "@import" not in text and "url(" not in text, "nothing is loaded from outside"
    assert text.count("data:image/png;base64,") == 3


# ------------------------------------------------------------------------------------------------
# 1. γ slider: canvas pixels equal blend_uint8 exactly.
def test_gamma_slider_pixels_exact(tmp_path: Path, open_studio, artifacts: Path):
    fid, real = gradient(), checkerboard()
    path = write_page(tmp_path / "endpoints.html", before=stripes(), endpoints=(fid, real), meta={"model": "synthetic"})
    s = open_studio(path)
    assert s.page.locator("#modes").is_hidden(), "one mode: no tabs"
    for k in (0, 500, 1000, 333):  # 0.333 as well: a weight that is not a short binary fraction
        s.fill("#gamma", k)
        shown = s.canvas()
        expected = blend_uint8(fid, real, k / 1000)
        assert np.abs(shown.astype(int) - expected).max() == 0, f"γ = {k / 1000}"
        if k in (0, 500, 1000):
            s.shot(artifacts / f"synthetic_gamma_{k / 1000:g}.png")
    assert "γ = 0.333" in s.page.locator("#caption").text_content()


# 2. Brush: feathered γ map, shown and exported exactly from the quantised map.
def test_brush_stroke_feathered_and_exports_reproduce(tmp_path: Path, open_studio, artifacts: Path):
    fid, real = gradient(), checkerboard()
    s = open_studio(write_page(tmp_path / "brush.html", before=stripes(), endpoints=(fid, real)))
    s.page.locator("#paint").check()
    radius, feather = 8, 12
    s.fill("#gamma", 0)
    s.fill("#brush-gamma", 100)
    s.fill("#brush-size", 2 * radius)
    s.fill("#brush-feather", feather)
    assert (s.gamma_map() == 0).all() and (s.canvas() == fid).all()

    y_img = 48.0
    x_start, x_end = 30, 98
    start, end = s.client(x_start, y_img), s.client(x_end, y_img)
    s.drag(start, end)
    g = s.gamma_map().astype(int)
    shown = s.canvas()
    # The page's own stroke line, recomputed from the screen points it received.
    r = s.rect()
    y0 = (start[1] - r["y"]) * H / r["height"]
    d = np.abs(np.arange(H) + 0.5 - y0)
    cosine = 0.5 * (1 + np.cos(np.pi * (d - radius) / feather))
    falloff = np.where(d <= radius, 1.0, np.where(d >= radius + feather, 0.0, cosine))
    expected_g = np.floor(255 * falloff + 0.5)

    mid = slice(40, 88)  # columns well inside the stroke, away from its round caps
    far = d > radius + feather + 1
    centre = d < radius - 1
    assert far.any() and centre.any()
    assert (g[far] == 0).all() and (shown[far] == fid[far]).all(), "far from the stroke: x_fid"
    assert (g[centre][:, mid] == 255).all(), "stroke centre: Γ = 1"
    assert (shown[centre][:, mid] == real[centre][:, mid]).all(), "stroke centre: x_real"
    column = g[:, mid]
    assert np.abs(column - expected_g[:, None]).max() <= 1, "raised-cosine feather (float32 map: ±1 level)"
    assert (column == column[:, :1]).all(), "a straight stroke gives the same profile in every column"
    below = column[int(y0):, 0]
    above = column[: int(y0) + 1, 0][::-1]
    for side in (below, above):
        assert (np.diff(side) <= 0).all(), "monotone falloff away from the centre"
        assert ((side > 0) & (side < 255)).sum() >= feather - 2, "the edge is feathered, not hard"
    # Beyond its ends (round caps of radius + feather) the map is untouched.
    reach = radius + feather
    assert (g[:, : x_start - reach - 1] == 0).all() and (g[:, x_end + reach + 1 :] == 0).all()
    assert g[int(y0), x_start - reach // 2] > 0 and g[int(y0), x_end + reach // 2] > 0

    gmap = g.astype(np.uint8)
    assert (shown == blend_uint8(fid, real, gmap)).all(), "display = blend of the quantised map"
    s.shot(artifacts / "synthetic_brush_stroke.png")
    s.page.locator("#show-map").check()
    s.shot(artifacts / "synthetic_brush_map_overlay.png")
    assert (s.canvas() == shown).all(), "the overlay is a separate layer"

    mode, exported_map = s.download("#dl-map", tmp_path / "map.png")
    assert mode == "L" and (exported_map == gmap).all()
    mode, exported = s.download("#dl-result", tmp_path / "result.png")
    assert mode == "RGB" and (exported == blend_uint8(fid, real, exported_map)).all()

    # Base γ moves unpainted pixels only; undo takes the stroke back.
    s.fill("#gamma", 500)
    g2 = s.gamma_map()
    assert (g2[far] == 128).all() and (g2[centre][:, mid] == 255).all()
    assert (s.canvas() == blend_uint8(fid, real, g2)).all()
    s.page.locator("#undo").click()
    assert (s.gamma_map() == 128).all()
    assert (s.canvas() == blend_uint8(fid, real, np.full((H, W), 128, np.uint8))).all()


# 3. Knob scrub and the t × γ pad.
KNOB = [("t=50", 50.0), ("t=100", 100.0), ("t=200", 200.0), ("t=400", 400.0)]


def test_knob_slider_exact_at_grid_and_interpolated_between(tmp_path: Path, open_studio, artifacts: Path):
    images = [rings(i * 1.3, tint) for i, tint in enumerate([(1, .3, .2), (.2, 1, .3), (.2, .4, 1), (1, 1, .2)])]
    s = open_studio(write_page(
        tmp_path / "knob.html", before=stripes(), knob_images=[(l, v, x) for (l, v), x in zip(KNOB, images)],
        meta={"model": "RGPA", "knob": "timestep"},
    ))
    assert s.page.locator("#sec-region").is_hidden(), "no endpoints: no γ brush"
    for k, i in ((0, 0), (100, 1), (200, 2), (300, 3)):
        s.fill("#knob", k)
        assert (s.canvas() == images[i]).all(), KNOB[i][0]
        assert "computed setting" in s.page.locator("#knob-note").text_content()
    s.fill("#knob", 150)
    assert (s.canvas() == interpolate_uint8(images[1], images[2], 0.5)).all()
    assert "interpolated between computed settings" in s.page.locator("#knob-note").text_content()
    assert "t=100 and t=200" in s.page.locator("#caption").text_content()
    s.fill("#knob", 225)
    assert (s.canvas() == interpolate_uint8(images[2], images[3], 0.25)).all()
    s.shot(artifacts / "synthetic_knob_interpolated.png")


def _pad_rows() -> list[tuple[str, float, np.ndarray, np.ndarray]]:
    tints = [(1, .3, .2), (.2, 1, .3), (.2, .4, 1)]
    return [(l, v, rings(i, t), checkerboard(4 + 4 * i)) for i, ((l, v), t) in enumerate(zip(KNOB, tints))]


def _pad_expected(rows, gamma, knob_k: int) -> np.ndarray:
    i = min(knob_k // 100, len(rows) - 2)
    w = (knob_k - 100 * i) / 100
    _, _, f0, r0 = rows[i]
    _, _, f1, r1 = rows[i + 1]
    return interpolate_uint8(blend_uint8(f0, r0, gamma), blend_uint8(f1, r1, gamma), w)


def test_pad_blends_rows_then_interpolates(tmp_path: Path, open_studio, artifacts: Path):
    rows = _pad_rows()
    s = open_studio(write_page(tmp_path / "pad.html", before=stripes(), knob_endpoints=rows))
    pad = s.rect("#pad")

    def click(fx: float, fy: float) -> tuple[float, int]:
        s.page.mouse.click(pad["x"] + fx * pad["width"], pad["y"] + fy * pad["height"])
        s.settle()
        return int(s.page.locator("#gamma").input_value()) / 1000, int(s.page.locator("#knob").input_value())

    gamma, knob = click(0.3, 0.2)  # between the top two rows (knob values ascend upwards)
    assert 0.25 < gamma < 0.35 and 100 < knob < 200 and knob != 150
    assert (s.canvas() == _pad_expected(rows, gamma, knob)).all()
    assert "interpolated between computed settings" in s.page.locator("#caption").text_content()
    s.shot(artifacts / "synthetic_pad.png")
    gamma, knob = click(0.8, 0.51)  # near the middle row: snaps onto it, an exact blend
    assert knob == 100
    assert (s.canvas() == blend_uint8(rows[1][2], rows[1][3], gamma)).all()
    # The brush works on the pad too: the map's γ blends within each row.
    s.page.locator("#paint").check()
    s.fill("#gamma", 300)
    s.fill("#knob", 140)
    s.drag(s.client(10, 20), s.client(110, 70))
    g = s.gamma_map()
    assert len(np.unique(g)) > 10
    w = 0.4
    expected = interpolate_uint8(blend_uint8(rows[1][2], rows[1][3], g), blend_uint8(rows[2][2], rows[2][3], g), w)
    assert (s.canvas() == expected).all()


# 4. Split view and zoom, read from the canvas and the layout.
def test_split_divider_and_zoom(tmp_path: Path, open_studio, artifacts: Path):
    fid, real, before = gradient(), checkerboard(), stripes()
    s = open_studio(write_page(tmp_path / "split.html", before=before, endpoints=(fid, real)))
    s.fill("#gamma", 1000)
    s.page.locator("#split-on").check()
    handle = s.rect("#split")
    for col in (40, 100):
        s.drag((handle["x"] + handle["width"] / 2, handle["y"] + 30), (s.client(col, 0)[0], handle["y"] + 30))
        handle = s.rect("#split")
        split_x = s.page.evaluate("studio.state().splitX")
        assert split_x == col
        shown = s.canvas()
        assert (shown[:, :col] == before[:, :col]).all() and (shown[:, col:] == real[:, col:]).all()
    s.shot(artifacts / "synthetic_split.png")
    s.page.locator("#split-on").uncheck()
    assert (s.canvas() == real).all()

    s.page.set_viewport_size({"width": 800, "height": 600})
    fit = s.rect()
    stage_w, stage_h = s.page.evaluate("(e => [e.clientWidth, e.clientHeight])(document.getElementById('stage'))")
    inner_w, inner_h = stage_w - 32, stage_h - 32  # inside the stage's 16 px padding
    assert math.isclose(fit["width"] / W, min(inner_w / W, inner_h / H), rel_tol=1e-3), "fit fills the stage"
    s.page.locator("#zoom [data-zoom='1']").click()
    assert (s.rect()["width"], s.rect()["height"]) == (W, H), "1:1: one image pixel per screen pixel (DPR 1)"
    s.page.locator("#zoom [data-zoom='4']").click()
    assert (s.rect()["width"], s.rect()["height"]) == (4 * W, 4 * H)
    assert s.page.evaluate("getComputedStyle(document.getElementById('view')).imageRendering") == "pixelated"
    s.page.locator("#zoom [data-zoom='8']").click()
    stage_js = "(e => [e.scrollWidth, e.clientWidth, e.scrollLeft])(document.getElementById('stage'))"
    scroll_w, client_w, left = s.page.evaluate(stage_js)
    assert scroll_w > client_w, "zoomed in beyond the stage: it scrolls"
    # Drag-to-pan (the brush is off): the stage scrolls by the drag, the image stays the same.
    x, y = s.client(64, 48)
    s.drag((x, y), (x + 60, y))
    assert abs(s.page.evaluate(stage_js)[2] - (left - 60)) <= 1
    # On screen, a row across checkerboard cell edges holds only that row's image colours: each
    # image pixel is an 8×8 block, never smoothed into in-between colours.
    r = s.rect()
    shot = np.asarray(Image.open(io.BytesIO(s.page.screenshot())).convert("RGB"))
    iy, ix0, ix1 = 44, 56, 74
    sy = int(r["y"] + 8 * iy + 4)
    strip = shot[sy, int(r["x"] + 8 * ix0):int(r["x"] + 8 * ix1)]
    colours = {tuple(c) for c in real[iy, ix0 - 1:ix1 + 1]}
    assert len(colours) == 2 and {tuple(c) for c in strip} <= colours
    assert (s.canvas() == real).all(), "zoom changes the view only"
    s.shot(artifacts / "synthetic_zoom_8x.png")
    s.page.locator("#zoom [data-zoom='fit']").click()
    assert math.isclose(s.rect()["width"], fit["width"], rel_tol=1e-3)


# 5. No network: after the file:// navigation nothing is requested, whatever is used.
def test_no_requests_after_load(tmp_path: Path, open_studio):
    rows = _pad_rows()
    title = 'All modes <b>&</b> "{{DATA}}" </script>'
    path = write_page(
        tmp_path / "all.html", before=stripes(), endpoints=(gradient(), checkerboard()),
        knob_images=[(l, v, f) for l, v, f, _ in rows], knob_endpoints=rows,
        title=title, meta={"note": "</script><i>x"},
    )
    s = open_studio(path)
    assert s.requests == [("navigation", path.as_uri())], s.requests
    assert s.page.title() == title and s.page.locator("h1").text_content() == title
    assert "</script><i>x" in s.page.locator("#meta").text_content()
    tabs = s.page.locator("#modes button")
    assert tabs.count() == 3
    for k in (0, 250, 500, 1000):
        s.fill("#gamma", k)
    tabs.nth(1).click()
    for k in (0, 50, 150, 200):
        s.fill("#knob", k)
    tabs.nth(2).click()
    pad = s.rect("#pad")
    s.drag((pad["x"] + 10, pad["y"] + 10), (pad["x"] + pad["width"] - 10, pad["y"] + pad["height"] - 10))
    s.page.locator("#paint").check()
    s.drag(s.client(10, 10), s.client(100, 80))
    s.page.locator("#undo").click()
    s.page.locator("#show-map").check()
    s.page.locator("#split-on").check()
    handle = s.rect("#split")
    s.drag((handle["x"] + 8, handle["y"] + 20), (handle["x"] - 40, handle["y"] + 20))
    for z in ("1", "2", "4", "8", "fit"):
        s.page.locator(f"#zoom [data-zoom='{z}']").click()
    s.settle()
    assert [u for phase, u in s.requests if phase == "interaction"] == [], s.requests
    # Downloads go through blob: URLs, which are local: none shows up as a request either.
    s.download("#dl-result", tmp_path / "r.png")
    s.download("#dl-map", tmp_path / "m.png")
    assert [u for phase, u in s.requests if phase == "interaction"] == [], s.requests


# 6. A real photo for the screenshots (looked at by hand when the page changes).
def test_astronaut_screenshots(tmp_path: Path, open_studio, artifacts: Path):
    from skimage import data, filters

    hq = data.astronaut()  # 512×512: a real photo at a typical SR output size
    side = hq.shape[0]
    lq = Image.fromarray(hq).resize((side // 4, side // 4), Image.BICUBIC)
    before = np.asarray(lq.resize((side, side), Image.BICUBIC))
    fid = (filters.gaussian(hq, sigma=1.2, channel_axis=-1) * 255 + 0.5).astype(np.uint8)  # smooth, faithful
    rng = np.random.default_rng(0)
    sharp = hq.astype(float) + 1.5 * (hq.astype(float) - fid) + rng.normal(0, 10, hq.shape)  # crisp, grainy
    real = np.clip(sharp + 0.5, 0, 255).astype(np.uint8)
    meta = {"model": "astronaut demo", "scale": "×4"}
    s = open_studio(write_page(tmp_path / "astronaut.html", before=before, endpoints=(fid, real), meta=meta))
    for k in (0, 500, 1000):
        s.fill("#gamma", k)
        assert (s.canvas() == blend_uint8(fid, real, k / 1000)).all()
        s.shot(artifacts / f"astronaut_gamma_{k / 1000:g}.png")
    s.fill("#gamma", 0)
    s.page.locator("#paint").check()
    s.fill("#brush-size", 60)
    s.fill("#brush-feather", 40)
    s.drag(s.client(120, 120), s.client(400, 300))
    g = s.gamma_map()
    assert (s.canvas() == blend_uint8(fid, real, g)).all()
    s.shot(artifacts / "astronaut_brush_stroke.png")
    s.page.locator("#show-map").check()
    s.shot(artifacts / "astronaut_brush_map_overlay.png")
    s.page.locator("#show-map").uncheck()
    s.page.locator("#split-on").check()
    s.shot(artifacts / "astronaut_split.png")


# ------------------------------------------------------------------------------------------------
# The CLI on trained (tiny) models: the page of a real export, reproduced by `python -m lit_sr.blend`.
def _export_model(make_cfg, tiny_bb, path: Path, *overrides: str) -> Path:
    import torch
    from omegaconf import OmegaConf

    from lit_sr.config.build import build_generator
    from lit_sr.model.export import export_adapter

    cfg = make_cfg(*overrides)
    g = build_generator(cfg, tiny_bb)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a zero-initialised LoRA is an identity: make the endpoints differ, as training does
        for name, p in g.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return export_adapter(g, path, OmegaConf.to_container(cfg))


def test_studio_cli_endpoint_page_export_is_reproduced_by_the_blend_cli(tmp_path, make_cfg, tiny_bb, open_studio,
                                                                        artifacts):
    from lit_sr import blend
    from lit_sr.studio.__main__ import main as studio_main

    model = _export_model(make_cfg, tiny_bb, tmp_path / "ifcsr", "experiment=ifcsr")
    photo = tmp_path / "photo.png"
    Image.fromarray(gradient()[:24, :32]).save(photo)
    assert studio_main(["--model", str(model), "--input", str(photo), "--out", str(tmp_path / "page")]) == 0
    s = open_studio(tmp_path / "page" / "photo.html")
    assert (s.w, s.h) == (128, 96)  # ×4
    s.page.locator("#paint").check()
    s.drag(s.client(20, 48), s.client(108, 48))
    s.shot(artifacts / "cli_ifcsr_brush.png")
    _, exported = s.download("#dl-result", tmp_path / "result.png")
    _, gamma_map = s.download("#dl-map", tmp_path / "map.png")
    assert 0 < int(gamma_map.max()) and int(gamma_map.min()) == 0  # a stroke, not the whole image
    out = tmp_path / "again.png"
    assert blend.main(["--fidelity", str(tmp_path / "page" / "photo_fidelity.png"), "--realism",
                       str(tmp_path / "page" / "photo_realism.png"), "--gamma-map", str(tmp_path / "map.png"),
                       "--output", str(out)]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), exported)  # bit-identical to the page's export
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "page" / "photo_fidelity.png")), exported)


def test_studio_cli_knob_page_shows_the_strategy_sweep(tmp_path, make_cfg, tiny_bb, open_studio):
    from lit_sr.studio.__main__ import main as studio_main

    model = _export_model(make_cfg, tiny_bb, tmp_path / "rgpa", "noise=rgpa")
    photo = tmp_path / "photo.png"
    Image.fromarray(checkerboard()[:16, :16]).save(photo)
    assert studio_main(["--model", str(model), "--input", str(photo), "--out", str(tmp_path / "page"),
                        "--knobs", "400", "50", "200"]) == 0
    s = open_studio(tmp_path / "page" / "photo.html")
    labels = s.page.evaluate("JSON.parse(document.getElementById('studio-data').textContent).knob.map(k => k.label)")
    assert labels == ["50", "200", "400"]  # sorted, one computed image per knob value
    assert not (tmp_path / "page" / "photo_fidelity.png").exists()  # no endpoints on this model
