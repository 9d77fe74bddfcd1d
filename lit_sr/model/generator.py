"""OneStepSR: LQ image → one denoiser evaluation → SR image.

The generator composes injected parts and contains the one-step pass only:

    LQ ─bicubic×s→ x_L ─VAE enc (+LoRA)→ z_L ─strategy→ (t, z_in) ─denoiser (+LoRA, +modulation)→ prediction
       ─strategy→ ẑ ─VAE dec (frozen)→ SR

The backbone (a UNet or MM-DiT denoiser, its autoencoder and its parameterisation: ε, v or flow
matching), noise strategy, conditioner, optional modulation (LQFM) and the named LoRA adapters are
chosen by config. Large images run the denoiser over overlapping latent tiles whose predictions
are blended with a smooth window, so peak memory follows the tile, not the image.
"""
from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_sr.model.adapters import AdapterSet, as_spec
from lit_sr.model.autoencoder import Autoencoder
from lit_sr.model.backbone import Backbone
from lit_sr.model.blend import blend
from lit_sr.model.colorfix import color_fix
from lit_sr.model.condition import Condition
from lit_sr.model.conditioning.base import Conditioner
from lit_sr.model.denoiser import Denoiser
from lit_sr.model.modulation import Modulation
from lit_sr.model.noise.base import NoiseContext, NoiseStrategy
from lit_sr.model.output import SROutput
from lit_sr.model.tiling import tiled
from lit_sr.typed import Fraction, NonNegative, Positive

log = logging.getLogger(__name__)


class OneStepSR(nn.Module):
    """One-step diffusion super-resolver built from a backbone and swappable components."""

    # Built in code from other config nodes, not from the ``model`` node.
    __injected_args__ = ("backbone", "noise", "conditioner", "lora", "modulation")

    def __init__(
        self,
        backbone: Backbone,
        noise: NoiseStrategy,
        conditioner: Conditioner,
        lora: dict | None = None,
        modulation: Modulation | None = None,
        scale: Positive = 4,
        vae_sample: bool = False,
        tile_latent: Positive | None = None,
        tile_overlap: NonNegative = 8,
        vae_tile: Positive | None = None,
        vae_tile_overlap: NonNegative = 128,
        vae_tile_stats: Positive = 1024,
        gradient_checkpointing: bool = False,
        endpoints: dict[str, list[str]] | None = None,
        gamma: Fraction = 0.5,
        color_fix: Literal["none", "adain", "wavelet"] = "none",
    ) -> None:
        super().__init__()
        self.denoiser: Denoiser = backbone.denoiser
        self.vae: Autoencoder = backbone.autoencoder
        self.parameterisation = backbone.parameterisation
        self.noise = noise
        self.conditioner = conditioner
        self.modulation = modulation
        self.scale = int(scale)
        self.vae_sample = bool(vae_sample)
        self.tile_latent = tile_latent
        self.tile_overlap = int(tile_overlap)
        self.vae_tile, self.vae_tile_overlap = vae_tile, int(vae_tile_overlap)
        self.vae_tile_stats = int(vae_tile_stats)  # GroupNorm statistics of tiled passes from the image at this size
        # Colour alignment of every output to the bicubic LQ (train and inference alike): the
        # decoder's low-frequency drift is replaced by the LQ's (colorfix.py); "none": the raw decode.
        self.color_fix = str(color_fix)
        # IFCSR: named endpoint networks, each a set of active denoiser adapters; γ blends their images.
        self.endpoint_adapters = {k: list(v) for k, v in (endpoints or {}).items()}
        if self.endpoint_adapters and set(self.endpoint_adapters) != {"fidelity", "realism"}:
            raise ValueError(f"model.endpoints must name 'fidelity' and 'realism', got {sorted(self.endpoint_adapters)}")
        if not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f"model.gamma must lie in [0, 1], got {gamma}")
        self.gamma = float(gamma)  # the blend a plain forward of an endpoint model returns
        self.vae_scale_factor = self.vae.factor
        # Input sizes must survive the VAE and the denoiser's down-sampling (or patching).
        self.size_multiple = self.vae_scale_factor * self.denoiser.size_multiple
        patch = self.denoiser.patch
        for key, value in (("tile_latent", tile_latent), ("tile_overlap", self.tile_overlap)):
            if value is not None and value % patch:
                raise ValueError(f"model.{key}={value} must be a multiple of the denoiser's patch size {patch}")
        noise.attach(self.parameterisation)
        conditioner.attach(backbone)
        if modulation is not None:
            modulation.attach(backbone)
        self.denoiser.requires_grad_(False)
        self.vae.requires_grad_(False)
        self.adapters = AdapterSet(self.denoiser.net, self.vae.net, {"denoiser": self.denoiser.lora_presets["all"]})
        lora = lora or {}
        for name, spec in (lora.get("denoiser") or {}).items():
            self.adapters.add("denoiser", name, as_spec(spec))
        for name, spec in (lora.get("vae") or {}).items():
            spec = as_spec(spec)
            if spec.scope is None:
                spec.scope = "encoder"  # the decoder stays frozen in every method of the catalogue
            self.adapters.add("vae", name, spec)
        # Every configured adapter is active and trainable until a training stage says otherwise.
        self.denoiser_adapters: list[str] = self.adapters.names("denoiser")
        self.vae_adapters: list[str] = self.adapters.names("vae")
        self.adapters.activate(self.denoiser_adapters, self.vae_adapters)
        for part, names in (("denoiser", self.denoiser_adapters), ("vae", self.vae_adapters)):
            for name in names:
                for p in self.adapters.parameters(part, name).values():
                    p.requires_grad_(True)
        if vae_tile is not None and vae_tile % self.vae_scale_factor:
            raise ValueError(f"model.vae_tile={vae_tile} must be a multiple of the VAE factor {self.vae_scale_factor}")
        if gradient_checkpointing:  # activations recomputed in backward: memory for compute (denoiser, VAE)
            self.denoiser.enable_gradient_checkpointing()
            self.vae.enable_gradient_checkpointing()
        self._warned_auto_tile = False
        # Small VAE halves distilled from this model (experiment=distill_vae) replace the full ones at
        # inference once attached (lit_sr.model.distilled.attach_distilled); their weights live in
        # their own file of the export, not in the model state.
        self.distilled_decoder: nn.Module | None = None
        self.distilled_encoder: nn.Module | None = None

    # ------------------------------------------------------------------ pieces
    def upsample(self, lq: torch.Tensor) -> torch.Tensor:
        """Bicubic ×scale of an LQ batch in [0, 1]."""
        if self.scale == 1:
            return lq
        return F.interpolate(lq, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised latent of an image in [-1, 1] (over overlapping tiles when larger than ``vae_tile``)."""
        if self.distilled_encoder is not None:
            return self.distilled_encoder.encode(x, self.vae_tile, self.vae_tile_overlap, self.vae_tile_stats)
        return self.vae.encode(x, self.vae_sample, generator, self.vae_tile, self.vae_tile_overlap, self.vae_tile_stats)

    def model_input(self, img: torch.Tensor) -> torch.Tensor:
        """An image in [0, 1] → [-1, 1], padded at the bottom/right to a size the VAE and denoiser accept.

        Reflect padding, or replicate where the image is smaller than the padding.
        """
        h, w = img.shape[-2:]
        ph, pw = (-h) % self.size_multiple, (-w) % self.size_multiple
        x = img * 2 - 1
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        return x

    def encode_hq(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latent of the HQ target (in [-1, 1]) for noise strategies that compare it with z_L, no gradient.

        The noise strategy's ``hq_encoder`` picks the encoder: ``adapted`` (the VAE with its
        active adapters, the same encoder as z_L, as RCOD's code does) or ``base`` (the
        pretrained encoder, a reference that does not move during training).
        """
        with torch.no_grad():
            if self.noise.hq_encoder == "base":
                with self.adapters.using(vae=[]):
                    return self.encode(y, generator)
            return self.encode(y, generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] from a normalised latent (the decoder is frozen; tiled beyond ``vae_tile``)."""
        if self.distilled_decoder is not None:
            return self.distilled_decoder.decode(z, self.vae_tile, self.vae_tile_overlap, self.vae_tile_stats)
        return self.vae.decode(z, self.vae_tile, self.vae_tile_overlap, self.vae_tile_stats)

    def denoise(self, z_in: torch.Tensor, t: torch.Tensor, cond: Condition,
                mod_maps: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The denoiser's prediction at integer timesteps ``t`` (over tiles when the latent exceeds
        ``tile_latent``, or the largest latent the denoiser accepts in one call)."""
        tile = self.tile_latent
        limit = self.denoiser.max_latent_size
        if limit is not None and max(z_in.shape[-2:]) > limit and (tile is None or tile > limit):
            if not self._warned_auto_tile:
                log.info("latent %s exceeds the %d the denoiser takes in one call: tiling it at %d",
                         tuple(z_in.shape[-2:]), limit, limit)
                self._warned_auto_tile = True
            tile = limit
        timestep = self.parameterisation.model_timestep(t)
        if tile is None or (z_in.shape[-2] <= tile and z_in.shape[-1] <= tile):
            return self.denoiser(z_in, timestep, cond, mod_maps)
        p = self.denoiser.patch

        def part(ys: slice, xs: slice) -> torch.Tensor:
            maps = None if mod_maps is None else tuple(m[..., ys.start // p:ys.stop // p, xs.start // p:xs.stop // p]
                                                       for m in mod_maps)
            return self.denoiser(z_in[..., ys, xs], timestep, cond, maps)

        return tiled(part, tuple(z_in.shape[-2:]), tile, self.tile_overlap, label="denoiser")

    def modulation_maps(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(λ_t·γ, λ_t·β) on the denoiser's modulation grid, or None without modulation."""
        if self.modulation is None:
            return None
        lam = self.noise.modulation_strength(t).to(x.dtype)[:, None, None, None]
        gamma, beta = self.modulation(x, t)
        return lam * gamma, lam * beta

    # ------------------------------------------------------------------ passes
    def step(
        self,
        lq: torch.Tensor,
        knob: Any = None,
        hq: torch.Tensor | None = None,
        batch: dict | None = None,
        generator: torch.Generator | None = None,
    ) -> SROutput:
        """The full pass, returning everything losses may need. ``lq``/``hq`` are in [0, 1]."""
        lq_up = self.upsample(lq)
        h, w = lq_up.shape[-2:]
        x = self.model_input(lq_up)  # cropped back to h × w below
        z_lq = self.encode(x, generator)
        z_hq = None
        if hq is not None and self.noise.needs_hq_latent:
            z_hq = self.encode_hq(self.model_input(hq), generator)  # padded like the LQ: the latents align
        ctx = NoiseContext(lq_up=x, z_lq=z_lq, training=self.training, knob=knob, z_hq=z_hq, generator=generator)
        t = self.noise.timesteps(ctx)
        z_in = self.noise.denoiser_input(ctx, t)
        cond = self.conditioner(x, batch)
        pred = self.denoise(z_in, t, cond.to(z_in.dtype), self.modulation_maps(x, t))
        z_hat = self.noise.to_x0(ctx, t, z_in, pred)
        sr = (self.decode(z_hat)[..., :h, :w] + 1) / 2
        if self.color_fix != "none":
            sr = color_fix(sr.float(), lq_up.float(), self.color_fix).to(sr.dtype)
        return SROutput(sr=sr, z_hat=z_hat, z_lq=z_lq, t=t, pred=pred, cond=cond, lq_up=lq_up, z_in=z_in, z_hq=z_hq,
                        extras=ctx.extras)

    def forward(self, lq: torch.Tensor, knob: Any = None, batch: dict | None = None) -> torch.Tensor:
        """LQ in [0, 1] → SR in [0, 1] at ``scale``× the size.

        ``batch`` carries per-image inputs of the conditioner (prompts, names for a prompt file).
        A model with fidelity/realism endpoints (IFCSR) returns their blend at ``self.gamma``
        (``model.gamma``), two generator passes; :meth:`endpoints` gives both images for other γ.
        """
        if self.has_endpoints:
            return blend(*self.endpoints(lq, knob, batch), self.gamma)
        return self.step(lq, knob=knob, batch=batch).sr

    @property
    def has_endpoints(self) -> bool:
        return bool(self.endpoint_adapters)

    def endpoint_step(self, name: str, lq: torch.Tensor, knob: Any = None, **kwargs: Any) -> SROutput:
        """One pass with the adapters of endpoint ``name`` active."""
        with self.adapters.using(denoiser=self.endpoint_adapters[name]):
            return self.step(lq, knob=knob, **kwargs)

    def endpoints(self, lq: torch.Tensor, knob: Any = None, batch: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_fid, x_real): exactly two generator passes; blend them with :func:`lit_sr.model.blend.blend`."""
        if not self.has_endpoints:
            raise ValueError("this model has no fidelity/realism endpoints (model.endpoints is not set)")
        return (self.endpoint_step("fidelity", lq, knob, batch=batch).sr,
                self.endpoint_step("realism", lq, knob, batch=batch).sr)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter that is not part of the frozen backbone (adapters, modulation, MLPs)."""
        return {n: p.detach() for n, p in self.named_parameters() if _is_added(n)}

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """What the trained *model* is (the export): :meth:`trainable_state_dict` without the adapters
        loss terms keep on the denoiser for training only (VSD's fake score)."""
        own = {"denoiser": set(self.denoiser_adapters), "vae": set(self.vae_adapters)}
        return {n: v for n, v in self.trainable_state_dict().items()
                if not n.startswith(BACKBONE_PARTS) or _adapter_of(n) in own[n.split(".", 1)[0]]}


BACKBONE_PARTS = ("denoiser.", "vae.")  # parameter-name prefixes of the frozen backbone's networks
DISTILLED_PARTS = ("distilled_decoder.", "distilled_encoder.")  # saved in their own file (model/distilled.py)


def _is_added(name: str) -> bool:
    """True for parameters the framework adds on top of the pretrained weights (and trains with the model)."""
    if name.startswith(DISTILLED_PARTS):
        return False
    if name.startswith(BACKBONE_PARTS):
        return "lora_" in name
    return True


def _adapter_of(name: str) -> str:
    """The adapter a peft parameter belongs to (``...lora_A.<adapter>.weight``)."""
    parts = name.split(".")
    i = next(k for k, part in enumerate(parts) if part.startswith("lora_"))
    return parts[i + 1]
