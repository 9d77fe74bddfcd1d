"""OnnxPipeline: an exported one-step graph run by ONNX Runtime, with the PyTorch pipeline's interface.

    python -m lit_sr.export_onnx --model runs/x/adapter --decoder distilled
    python -m lit_sr.infer --model runs/x/adapter --input photos/ --output sr/ --runtime onnx --decoder distilled

It feeds the graph of :mod:`lit_sr.export_onnx` what :class:`~lit_sr.pipeline.LitSRPipeline` would
compute: the knob becomes ``t`` through the graph's JSON (the model's default, presets, integer
timesteps), and strategies that inject noise get the standard normal noise drawn by torch under
the same seed as the PyTorch pass draws it — so an untiled image equals the PyTorch one (within
1e-3 on [0, 1]; the JSON holds the difference measured at export).

Tiling runs **the whole pass** per tile: overlapping LQ tiles of ``tile`` latent pixels (the
``--tile`` unit) go through the graph and their outputs are blended with the project's smooth
window (:func:`lit_sr.model.tiling.tiled`); the noise of every tile is cut from one noise image,
so overlaps agree. Unlike the PyTorch path, whose tiles share GroupNorm statistics taken from the
whole image, every GroupNorm (the full VAE's and the distilled halves') then normalises per tile,
so a tiled graph output differs more from the untiled one than a tiled PyTorch output does. Large outputs
tile automatically (``auto_tile``, as :mod:`lit_sr.autotile`).
"""
from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.imageio import to_uint8
from lit_sr.autotile import AUTO_TILE_SIDE, DEFAULT_AUTO_TILE, DEFAULT_MAX_OUTPUT_PIXELS, check_output_size
from lit_sr.errors import LitSRError, WeightsError
from lit_sr.metrics.sweep import seeded
from lit_sr.model.colorfix import color_fix
from lit_sr.model.noise.base import parse_timestep
from lit_sr.model.tiling import tiled
from lit_sr.pipeline import PipelineOutput

log = logging.getLogger("lit_sr.onnx_pipeline")


class OnnxPipeline:
    """An ONNX graph of the one-step pass with its JSON (see the module docstring).

    ``tile``: whole-pass tiles of this many latent pixels (None: untiled unless ``auto_tile``);
    ``tile_overlap``: latent pixels shared by neighbouring tiles (None: the model's).
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, tile: int | None = None,
                 tile_overlap: int | None = None, auto_tile: int | None = DEFAULT_AUTO_TILE,
                 max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS) -> None:
        from lit_sr.export_onnx import FORMAT, load_session

        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise WeightsError(f"ONNX graph not found: {path} (and its {meta_path.name})")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise WeightsError(f"{meta_path}: not a lit_sr ONNX description")
        self.path = path
        self.session = load_session(path, device, threads)
        self.scale, self.factor = int(self.meta["scale"]), int(self.meta["factor"])
        self.tile = tile
        self.tile_overlap = int(self.meta["tile_overlap"] if tile_overlap is None else tile_overlap)
        self.auto_tile, self.max_output_pixels = auto_tile, max_output_pixels
        self.has_endpoints = False

    @classmethod
    def from_export(cls, model: str | Path, decoder: str = "full", encoder: str = "full", **kwargs: Any) -> OnnxPipeline:
        """The graph ``python -m lit_sr.export_onnx`` wrote into the export folder ``model`` for these VAE halves."""
        from lit_sr.export_onnx import default_path
        from lit_sr.model.distilled import check_choice

        for part, choice in (("decoder", decoder), ("encoder", encoder)):
            check_choice(part, choice)
        path = default_path(model, decoder, encoder)
        if not path.is_file():
            raise LitSRError(f"--runtime onnx: no ONNX graph for --decoder {decoder} --encoder {encoder} in {model}; "
                             f"export it first: python -m lit_sr.export_onnx --model {model} --decoder {decoder} "
                             f"--encoder {encoder}")
        return cls(path, **kwargs)

    # ------------------------------------------------------------------ knob
    def parse_knob(self, knob: Any) -> int:
        """The graph's ``t`` for a user knob (ValueError with one line when it is not valid)."""
        table = self.meta["knob"]
        if knob is None or not table["has_knob"]:
            if knob is not None:
                log.warning("this model has no fidelity-realism knob; knob=%r is ignored", knob)
            return int(table["default"])
        text = str(knob).strip().lower()
        if text in table["presets"]:
            return int(table["presets"][text])
        if text == "adaptive":
            raise ValueError("knob 'adaptive' needs the MEM, which the ONNX graph does not hold: use --runtime torch")
        if not table["integer"]:
            raise ValueError(f"knob must be one of {', '.join(table['presets'])}; got {knob!r}")
        return parse_timestep(knob, int(table["num_train_timesteps"]), "knob")

    # ------------------------------------------------------------------ running
    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        m, f = int(self.meta["size_multiple"]), self.factor
        h, w = height * self.scale, width * self.scale
        return batch, int(self.meta["latent_channels"]), -(-h // m) * m // f, -(-w // m) * m // f

    def _graph(self, lq: torch.Tensor, t: int, noise: torch.Tensor | None) -> torch.Tensor:
        from lit_sr.export_onnx import run_session

        feeds = {"lq": lq.float().cpu().numpy(), "t": np.full((lq.shape[0],), t, dtype=np.int64)}
        if noise is not None:
            feeds["noise"] = noise.float().cpu().numpy()
        return torch.from_numpy(run_session(self.session, feeds))

    def sr(self, lq: torch.Tensor, t: int, seed: int | None = None) -> torch.Tensor:
        """SR images in [0, 1] of an LQ batch in [0, 1] at timestep ``t`` (tiled when large)."""
        b, _, h, w = lq.shape
        least = int(self.meta["min_lq_side"])
        if min(h, w) < least:
            raise LitSRError(f"the ONNX graph takes inputs of at least {least} px per side, got {w}x{h} "
                             "(use --runtime torch)")
        tile = self._tile_side(h, w)
        draws = bool(self.meta["draws_noise"])
        with seeded(seed, torch.device("cpu")) if seed is not None else nullcontext():
            if tile is None:
                noise = torch.randn(self.latent_shape(b, h, w)) if draws else None  # as NoisedLatent draws it
                return self._graph(lq, t, noise)
            return self._tiled(lq, t, tile, draws)

    def _tile_side(self, h: int, w: int) -> int | None:
        """Tile side in latent pixels, or None for one pass (``tile``, else above ``auto_tile`` latent pixels)."""
        f = self.factor
        largest = int(self.meta.get("max_lq_side") or 8192) * self.scale // f  # latent side one graph call takes
        if self.tile is not None:
            return min(self.tile, largest)
        n = -(-h * self.scale // f) * -(-w * self.scale // f)
        if max(h, w) <= int(self.meta.get("max_lq_side") or 8192) and (self.auto_tile is None or n <= self.auto_tile):
            return None
        tile = min(AUTO_TILE_SIDE, largest)
        log.info("tiling the %dx%d output (%d latent pixels): whole-pass tiles of %d latent pixels (--auto-tile N "
                 "moves the threshold)", w * self.scale, h * self.scale, n, tile)
        return tile

    def _tiled(self, lq: torch.Tensor, t: int, tile: int, draws: bool) -> torch.Tensor:
        s, f = self.scale, self.factor
        step = max(f // s, 1)  # LQ pixels per latent pixel (SD ×4: 2), so tile edges fall on the latent grid
        b, _, h, w = lq.shape
        ph, pw = (-h) % step, (-w) % step
        x = F.pad(lq, (0, pw, 0, ph), mode="replicate") if ph or pw else lq
        hu, wu = x.shape[-2] // step, x.shape[-1] // step  # grid units
        per_unit = step * s  # output pixels per unit
        units = max(tile * f // per_unit, 1)
        overlap = max(self.tile_overlap * f // per_unit, 0)
        least = -(-int(self.meta["min_lq_side"]) // step)
        units = max(units, least)
        lat = max(per_unit // f, 1)  # latent pixels per unit
        margin = int(self.meta["size_multiple"]) // f
        noise = torch.randn(b, int(self.meta["latent_channels"]), hu * lat + margin, wu * lat + margin) if draws else None

        def part(ys: slice, xs: slice) -> torch.Tensor:
            piece = x[..., ys.start * step:ys.stop * step, xs.start * step:xs.stop * step]
            n = None
            if noise is not None:
                shape = self.latent_shape(b, *piece.shape[-2:])
                n = noise[..., ys.start * lat:ys.start * lat + shape[2], xs.start * lat:xs.start * lat + shape[3]]
            return self._graph(piece, t, n)

        out = tiled(part, (hu, wu), units, overlap, out_per_unit=per_unit, label="onnx")
        return out[..., :h * s, :w * s]

    def images(self, lq: torch.Tensor, knob: Any = None, color: str = "none", seed: int | None = None) -> list[dict]:
        """8-bit SR images of an LQ batch, one ``{"": array}`` per image (as :meth:`LitSRPipeline.images`)."""
        return self.run(lq, knob, color=color, seed=seed).images

    def run(self, lq: torch.Tensor, knob: Any = None, gammas=None, gamma_map=None, color: str = "none",
            batch: dict | None = None, seed: int | None = None) -> PipelineOutput:
        """:meth:`LitSRPipeline.run` for the graph: 8-bit images and the timestep each ran at."""
        if gammas is not None or gamma_map is not None:
            raise LitSRError("gamma needs a model with fidelity/realism endpoints, which ONNX graphs do not hold")
        t = self.parse_knob(knob)
        height, width = lq.shape[-2] * self.scale, lq.shape[-1] * self.scale
        check_output_size(height, width, self.max_output_pixels, f"a {lq.shape[-1]}x{lq.shape[-2]} input")
        sr = self.sr(lq, t, seed)
        if color != "none":
            ref = F.interpolate(lq.float(), scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)
            sr = color_fix(sr, ref, color)
        return PipelineOutput([{"": to_uint8(sr[i])} for i in range(lq.shape[0])], [t] * lq.shape[0])
