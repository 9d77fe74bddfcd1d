"""LitSRPipeline: a trained export in one call, diffusers-style.

    from lit_sr.pipeline import LitSRPipeline
    pipe = LitSRPipeline.from_pretrained("runs/ifcsr/adapter", base="/models/stable-diffusion-2-1-base")
    sr = pipe("photo.png", gamma=0.3)                 # a PIL image
    pipe.set_adapters(["main", "alignment"], [1.0, 0.6])   # per-adapter weights (λ, PiSA-SR style)

The pipeline rebuilds the generator from the export's config (everything trained: all UNet
adapters, VAE-encoder LoRA, LQFM, VPIM) and runs exactly what ``lit_sr.infer`` runs —
``lit_sr.infer`` is this pipeline applied to each file — so its images equal the CLI's outputs.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from datamodules.imageio import load_image, to_uint8
from lit_sr.config.loading import load_generator
from lit_sr.errors import LitSRError
from lit_sr.metrics.sweep import seeded
from lit_sr.model.blend import blend_many, blend_uint8
from lit_sr.model.colorfix import color_fix
from lit_sr.model.generator import OneStepSR

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class LitSRPipeline:
    """A generator with its device, precision and inference settings (see the module docstring)."""

    def __init__(self, generator: OneStepSR, config: Any = None, device: str | torch.device = "cpu",
                 precision: str = "fp32") -> None:
        if precision not in DTYPES:
            raise LitSRError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
        self.generator = generator.eval()
        self.config = config
        self.device = torch.device(device)
        self.dtype = DTYPES[precision]
        self.generator.to(self.device)

    @classmethod
    def from_pretrained(cls, path: str | Path, base: str | None = None, device: str | None = None,
                        precision: str = "fp32", overrides: Sequence[str] = (), tile: int | None = None,
                        vae_tile: int | None = None, fuse: bool = False, channels_last: bool = False,
                        compile: str | None = None) -> LitSRPipeline:
        """Load an export folder (or a checkpoint); ``base`` is the local SD directory it was trained on.

        Speed options: ``fuse`` merges the LoRA into the base weights; ``channels_last`` stores the
        denoiser and VAE convolutions' activations NHWC; ``compile`` runs the denoiser and the VAE decoder
        through ``torch.compile`` with that backend (``inductor``; the first image pays the compile).
        """
        sets = [*(f"backbone.path={base}" for _ in [base] if base), *overrides]
        generator, cfg = load_generator(path, sets)
        if tile is not None:
            generator.tile_latent = tile
        if vae_tile is not None:
            generator.vae_tile = vae_tile
        pipe = cls(generator, cfg, device or ("cuda" if torch.cuda.is_available() else "cpu"), precision)
        if fuse:
            pipe.fuse()
        if channels_last:
            for module in (generator.denoiser, generator.vae):
                module.to(memory_format=torch.channels_last)
        if compile:
            pipe.compile(compile)
        return pipe

    def compile(self, backend: str = "inductor") -> None:
        """``torch.compile`` the denoiser's and the VAE decoder's forward (adapter switches recompile once each)."""
        for module in (self.generator.denoiser.net, self.generator.vae.decoder):
            module.forward = torch.compile(module.forward, backend=backend, dynamic=False)

    # ------------------------------------------------------------------ settings
    def set_adapters(self, names: Sequence[str], weights: Sequence[float] | None = None, part: str = "denoiser") -> None:
        """Scale adapters' contributions, as diffusers' ``set_adapters`` (1.0 = as trained).

        For dual-LoRA models (CODSR's ``main`` + ``alignment``) the second adapter's λ is a second
        fidelity–realism dial.
        """
        names = list(names)
        weights = [1.0] * len(names) if weights is None else list(weights)
        if len(weights) != len(names):
            raise LitSRError(f"{len(names)} adapters but {len(weights)} weights")
        try:
            self.generator.adapters.set_weights(part, dict(zip(names, weights)))
        except ValueError as exc:
            raise LitSRError(str(exc)) from None

    def fuse(self) -> None:
        """Merge the active denoiser adapters into the base weights (faster; endpoint models cannot)."""
        if self.generator.has_endpoints:
            raise LitSRError("--fuse needs one fixed set of adapters; endpoint (IFCSR) models switch adapters per pass")
        self.generator.adapters.fuse("denoiser")

    # ------------------------------------------------------------------ running
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def images(self, lq: torch.Tensor, knob: Any = None, gammas: Sequence[float] | None = None,
               gamma_map: np.ndarray | None = None, color: str = "none", batch: dict | None = None,
               seed: int | None = None) -> list[dict[str, np.ndarray]]:
        """8-bit SR images of an LQ batch in [0, 1], one dict per image: ``{"": sr}``, ``{"_g0.5": …}``
        per γ, or ``{"_region": …}``. ``seed`` seeds the noise a strategy draws, once per call."""
        g = self.generator
        if (gammas is not None or gamma_map is not None) and not g.has_endpoints:
            raise LitSRError(f"{'gamma' if gammas is not None else 'gamma_map'} needs a model with fidelity/realism "
                             "endpoints (IFCSR)")
        knob = g.noise.parse_knob(knob)
        lq = lq.to(self.device)
        with torch.no_grad(), self._autocast(), (seeded(seed, self.device) if seed is not None else nullcontext()):
            if gammas is None and gamma_map is None:
                outs = {"": g(lq, knob, batch)}
            else:
                x_fid, x_real = g.endpoints(lq, knob, batch)
                outs = ({f"_g{v:g}": x for v, x in zip(gammas, blend_many(x_fid, x_real, list(gammas)))}
                        if gammas is not None else {"fid": x_fid, "real": x_real})
            ref = g.upsample(lq).float()
        fixed = {k: color_fix(x.float(), ref, color) for k, x in outs.items()}
        results = [{k: to_uint8(x[i]) for k, x in fixed.items()} for i in range(lq.shape[0])]
        if gamma_map is not None:  # the page's rule on the 8-bit endpoints: bit-identical to its export
            h, w = results[0]["fid"].shape[:2]
            if gamma_map.shape != (h, w):
                raise LitSRError(f"the gamma map is {gamma_map.shape[1]}x{gamma_map.shape[0]}, the output is {w}x{h}")
            results = [{"_region": blend_uint8(r["fid"], r["real"], gamma_map)} for r in results]
        return results

    def __call__(self, image: str | Path | Image.Image | np.ndarray | torch.Tensor, knob: Any = None,
                 gamma: float | Sequence[float] | None = None, gamma_map: np.ndarray | str | Path | None = None,
                 color: str = "none", seed: int | None = None) -> Image.Image | list[Image.Image]:
        """Super-resolve one image: a PIL image (a list for several γ values)."""
        lq = _as_tensor(image)
        if isinstance(gamma_map, (str, Path)):
            from lit_sr.blend import read_gamma_map

            gamma_map = read_gamma_map(gamma_map)
        gammas = None if gamma is None else [float(v) for v in ([gamma] if isinstance(gamma, (int, float)) else gamma)]
        batch = {"path": [str(image)]} if isinstance(image, (str, Path)) else None
        out = self.images(lq, knob, gammas, gamma_map, color, batch, seed)[0]
        pil = [Image.fromarray(a) for a in out.values()]
        return pil if gammas is not None and len(gammas) > 1 else pil[0]


def _as_tensor(image: str | Path | Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1] from a path, a PIL image, an H×W×3 uint8 array or a tensor."""
    if isinstance(image, (str, Path)):
        return load_image(image)[None]
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise LitSRError(f"expected an H×W×3 uint8 array, got shape {image.shape} dtype {image.dtype}")
        return torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
    if isinstance(image, torch.Tensor):
        return image[None] if image.ndim == 3 else image
    raise LitSRError(f"cannot super-resolve a {type(image).__name__}")
