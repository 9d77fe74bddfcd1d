"""LitSRPipeline: a trained export in one call, diffusers-style.

    from lit_sr.pipeline import LitSRPipeline
    pipe = LitSRPipeline.from_pretrained("runs/ifcsr/adapter", base="/models/stable-diffusion-2-1-base")
    sr = pipe("photo.png", gamma=0.3)                 # a PIL image
    pipe.set_adapters(["main", "alignment"], [1.0, 0.6])   # per-adapter weights (λ, PiSA-SR style)

The pipeline rebuilds the generator from the export's config (everything trained: all denoiser
adapters, VAE-encoder LoRA, LQFM, VPIM) and runs exactly what ``lit_sr.infer`` runs —
``lit_sr.infer`` is this pipeline applied to each file — so its images equal the CLI's outputs.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from datamodules.imageio import load_image, to_uint8
from lit_sr.autotile import DEFAULT_AUTO_TILE, DEFAULT_MAX_OUTPUT_PIXELS, auto_tiled, check_output_size
from lit_sr.config.loading import load_generator
from lit_sr.errors import LitSRError
from lit_sr.metrics.sweep import seeded
from lit_sr.model.blend import blend, blend_many, blend_uint8
from lit_sr.model.colorfix import color_fix
from lit_sr.model.generator import OneStepSR

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def usable_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, or one line saying why it cannot be used here (before any weights load)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise LitSRError(f"unknown device {str(device)!r}: {str(exc).splitlines()[0]}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LitSRError(f"device {str(device)!r}: torch {torch.__version__} sees no CUDA GPU on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise LitSRError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise LitSRError(f"device {str(device)!r}: MPS is not available on this machine")
    return dev


@dataclass
class PipelineOutput:
    """What one call made: ``images`` (one dict of 8-bit arrays per input image, see
    :meth:`LitSRPipeline.images`) and the timestep each image ran at (``knob=adaptive`` picks one
    per image)."""

    images: list[dict[str, np.ndarray]]
    timesteps: list[int]


class LitSRPipeline:
    """A generator with its device, precision and inference settings (see the module docstring).

    ``auto_tile``: passes whose latent has more pixels than this run over tiles (None: never
    automatically; :mod:`lit_sr.autotile`); ``max_output_pixels``: larger outputs are refused
    with one line (None: no limit).
    """

    def __init__(self, generator: OneStepSR, config: Any = None, device: str | torch.device = "cpu",
                 precision: str = "fp32", auto_tile: int | None = DEFAULT_AUTO_TILE,
                 max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS) -> None:
        if precision not in DTYPES:
            raise LitSRError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
        for name, value in (("auto_tile", auto_tile), ("max_output_pixels", max_output_pixels)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise LitSRError(f"{name} must be a positive number of pixels or None, got {value!r}")
        self.generator = generator.eval()
        self.config = config
        self.device = usable_device(device)
        self.dtype = DTYPES[precision]
        self.auto_tile = auto_tile
        self.max_output_pixels = max_output_pixels
        self.generator.to(self.device)

    @classmethod
    def from_pretrained(cls, path: str | Path, base: str | None = None, device: str | None = None,
                        precision: str = "fp32", overrides: Sequence[str] = (), tile: int | None = None,
                        vae_tile: int | None = None, fuse: bool = False, channels_last: bool = False,
                        compile: str | None = None, adapter_weights: Mapping[str, float] | None = None,
                        auto_tile: int | None = DEFAULT_AUTO_TILE,
                        max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS, decoder: str = "full",
                        encoder: str = "full") -> LitSRPipeline:
        """Load an export folder (or a checkpoint); ``base`` is the local SD directory it was trained on.

        ``decoder`` / ``encoder``: ``full`` (default) or ``distilled`` — the small VAE halves
        ``experiment=distill_vae`` added to the export (much faster at large sizes; the model card
        gives their cost and fidelity).

        ``tile`` / ``vae_tile`` set ``model.tile_latent`` / ``model.vae_tile`` (checked like the
        config's own values). ``adapter_weights`` scales denoiser adapters (:meth:`set_adapters`) before
        anything is fused. Speed options: ``fuse`` merges the LoRA into the base weights;
        ``channels_last`` stores the denoiser and VAE convolutions' activations NHWC; ``compile`` runs
        the denoiser and the VAE decoder through ``torch.compile`` with that backend (``inductor``; the
        first image pays the compile).
        """
        sets = [*(f"backbone.path={base}" for _ in [base] if base), *overrides]
        # Through the config, so the values meet the same checks as model.tile_latent/vae_tile in a YAML.
        sets += [f"model.{key}={value}" for key, value in (("tile_latent", tile), ("vae_tile", vae_tile))
                 if value is not None]
        device = usable_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        generator, cfg = load_generator(path, sets, decoder=decoder, encoder=encoder)
        pipe = cls(generator, cfg, device, precision,
                   auto_tile=auto_tile, max_output_pixels=max_output_pixels)
        if adapter_weights:
            pipe.set_adapters(list(adapter_weights), list(adapter_weights.values()))
        if fuse:
            pipe.fuse()
        if channels_last:
            for module in (generator.denoiser, generator.vae, generator.distilled_decoder, generator.distilled_encoder):
                if module is None:
                    continue
                module.to(memory_format=torch.channels_last)
        if compile:
            pipe.compile(compile)
        return pipe

    def compile(self, backend: str = "inductor") -> None:
        """``torch.compile`` the denoiser's and the VAE decoder's forward (adapter switches recompile once each;
        a distilled decoder is compiled instead of the full one)."""
        g = self.generator
        decoder = g.distilled_decoder if g.distilled_decoder is not None else g.vae.decoder
        for module in (g.denoiser.net, decoder):
            module.forward = torch.compile(module.forward, backend=backend, dynamic=False)

    @property
    def scale(self) -> int:
        return self.generator.scale

    @property
    def has_endpoints(self) -> bool:
        return self.generator.has_endpoints

    def parse_knob(self, knob: Any) -> Any:
        """The knob checked by the noise strategy (ValueError with one line when it is not valid)."""
        return self.generator.noise.parse_knob(knob)

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
        adapters = self.generator.adapters
        fused = bool(adapters.fused[part])  # merged at the old weights: merge again at the new ones
        try:
            if fused:
                adapters.unfuse(part)
            adapters.set_weights(part, dict(zip(names, weights)))
        except ValueError as exc:
            raise LitSRError(str(exc)) from None
        finally:
            if fused:
                adapters.fuse(part)

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
        return self.run(lq, knob, gammas, gamma_map, color, batch, seed).images

    def run(self, lq: torch.Tensor, knob: Any = None, gammas: Sequence[float] | None = None,
            gamma_map: np.ndarray | None = None, color: str = "none", batch: dict | None = None,
            seed: int | None = None) -> PipelineOutput:
        """:meth:`images` with the timestep each image ran at.

        Outputs above ``max_output_pixels`` are refused before anything runs; large ones run over
        tiles (``auto_tile``, one log line).
        """
        g = self.generator
        if (gammas is not None or gamma_map is not None) and not g.has_endpoints:
            raise LitSRError(f"{'gamma' if gammas is not None else 'gamma_map'} needs a model with fidelity/realism "
                             "endpoints (IFCSR)")
        knob = g.noise.parse_knob(knob)
        height, width = lq.shape[-2] * g.scale, lq.shape[-1] * g.scale
        check_output_size(height, width, self.max_output_pixels, f"a {lq.shape[-1]}x{lq.shape[-2]} input")
        lq = lq.to(self.device)
        with torch.no_grad(), self._autocast(), (seeded(seed, self.device) if seed is not None else nullcontext()), \
                auto_tiled(g, height, width, self.auto_tile):
            passes, t = self._passes(lq, knob, batch)
            if gammas is None and gamma_map is None:
                outs = {"": passes[0] if len(passes) == 1 else blend(*passes, g.gamma)}
            else:
                x_fid, x_real = passes
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
        return PipelineOutput(results, [int(v) for v in t.reshape(-1).tolist()])

    def _passes(self, lq: torch.Tensor, knob: Any, batch: dict | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The generator's SR images — one, or (x_fid, x_real) of an endpoint model, exactly what its
        ``forward`` / ``endpoints`` compute — and the (B,) timesteps they ran at."""
        g = self.generator
        if g.has_endpoints:
            fid = g.endpoint_step("fidelity", lq, knob, batch=batch)
            real = g.endpoint_step("realism", lq, knob, batch=batch)
            return [fid.sr, real.sr], fid.t
        out = g.step(lq, knob=knob, batch=batch)
        return [out.sr], out.t

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
