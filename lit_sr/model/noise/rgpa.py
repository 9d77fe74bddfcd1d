"""CODSR's region-adaptive generative prior activation (RGPA).

Textured regions can take (and benefit from) more generated detail than flat ones, where extra
noise only produces artefacts. RGPA therefore scales the injected latent noise per region by a
weight W computed from the LQ's gradients:

    gray = 0.299 R + 0.587 G + 0.114 B          (upsampled LQ in [0, 1])
    g    = |Sobel_x(gray)| + |Sobel_y(gray)|      (replicate padding)
    p    = mean of g over each patch_size × patch_size patch (16)
    W    = low                       if p ≤ t1
           slope·(p − t1) + low      if t1 < p ≤ t2
           high                      if p > t2          (0.3 / 7 / 1.0 with t1 = 0.15, t2 = 0.25)

W is brought to latent resolution (one 16-px patch = 16/f latent pixels for VAE factor f), then

    ε_a = W ⊙ ε,   z_t = √ᾱ_t·z_L + √(1−ᾱ_t)·ε_a,   ẑ = z_L + w_t·(ε_a − ε̂),   w_t = √(1−ᾱ_t)/√ᾱ_t.

ẑ is the DDPM x0-estimate from z_t written around z_L (the same value, without the cancellation
error of subtracting two large terms). On a flow-matching backbone the same map weights the
noise of ``z_t = (1−σ_t)·z_L + σ_t·ε_a`` and ẑ = z_L + σ_t·(ε_a − z_L − v̂) (:class:`NoisedLatent`
through the parameterisation; ``docs/backbones.md``). Training draws t uniformly from [t_min, t_max]; the
inference knob is t itself (CODSR's default is 100): a larger t injects more noise and lets the
generative prior add more detail.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_sr.model.image_ops import filter_responses, gray
from lit_sr.model.noise.base import NoiseContext
from lit_sr.model.noise.noised import NoisedLatent


def gradient_weight(
    lq_up: torch.Tensor,
    patch_size: int = 16,
    t1: float = 0.15,
    t2: float = 0.25,
    slope: float = 7.0,
    low: float = 0.3,
    high: float = 1.0,
) -> torch.Tensor:
    """Patch-wise RGPA weight (B, 1, ⌈H/P⌉, ⌈W/P⌉) of an image in [-1, 1] (see module docstring)."""
    grad = filter_responses(gray(lq_up.float() * 0.5 + 0.5)).sum(dim=1, keepdim=True)
    ph, pw = (-grad.shape[-2]) % patch_size, (-grad.shape[-1]) % patch_size
    if ph or pw:  # partial border patches average what they have (replicated edge pixels)
        grad = F.pad(grad, (0, pw, 0, ph), mode="replicate")
    return patch_weight(F.avg_pool2d(grad, patch_size), t1, t2, slope, low, high)


def patch_weight(p: torch.Tensor, t1: float = 0.15, t2: float = 0.25, slope: float = 7.0, low: float = 0.3,
                 high: float = 1.0) -> torch.Tensor:
    """The piecewise map from a patch's mean gradient p to its noise weight W."""
    mid = slope * (p - t1) + low
    return torch.where(p <= t1, torch.full_like(p, low), torch.where(p <= t2, mid, torch.full_like(p, high)))


def to_latent_grid(weight: torch.Tensor, image_hw: tuple[int, int], latent_hw: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Nearest patch value for every latent pixel, so the map stays aligned with the image.

    Latent pixel i covers image rows [i·f, (i+1)·f), f = image size / latent size; it takes the
    weight of the patch holding its first row: ``i·f // patch_size``.
    """
    (H, W), (h, w) = image_hw, latent_hw
    if H % h or W % w or H // h != W // w:
        raise ValueError(f"image size {image_hw} is not a whole multiple of the latent size {latent_hw}")
    f = H // h
    rows = torch.arange(h, device=weight.device) * f // patch_size
    cols = torch.arange(w, device=weight.device) * f // patch_size
    return weight[:, :, rows][:, :, :, cols]


class RGPANoise(NoisedLatent):
    """Gradient-weighted latent noise at a chosen t (CODSR's RGPA); knob = t.

    The noise injection, knob and ``ẑ`` are :class:`NoisedLatent`'s; RGPA adds the weight map
    (``ctx.extras["rgpa_weight"]``; the injected ``ε_a = W·ε`` is ``ctx.extras["eps"]``).
    """

    name = "rgpa"

    def __init__(
        self,
        t_min: int = 50,
        t_max: int = 250,
        timestep: int = 100,
        patch_size: int = 16,
        t1: float = 0.15,
        t2: float = 0.25,
        slope: float = 7.0,
        low: float = 0.3,
        high: float = 1.0,
        sweep: list[int] | None = None,
    ) -> None:
        super().__init__(t_min, t_max, timestep, sweep)
        if patch_size <= 0:
            raise ValueError(f"noise.patch_size must be > 0, got {patch_size}")
        if not t1 < t2:
            raise ValueError(f"need noise.t1 < noise.t2, got {t1}, {t2}")
        self.patch_size = int(patch_size)
        self.t1, self.t2, self.slope, self.low, self.high = float(t1), float(t2), float(slope), float(low), float(high)

    # ------------------------------------------------------------------ pass
    def weight(self, ctx: NoiseContext) -> torch.Tensor:
        """W at latent resolution, (B, 1, h, w), in the latent's dtype."""
        w = gradient_weight(ctx.lq_up, self.patch_size, self.t1, self.t2, self.slope, self.low, self.high)
        w = to_latent_grid(w, tuple(ctx.lq_up.shape[-2:]), tuple(ctx.z_lq.shape[-2:]), self.patch_size)
        return w.to(ctx.z_lq.dtype)

    def noise_weight(self, ctx: NoiseContext) -> torch.Tensor:
        weight = self.weight(ctx)
        ctx.extras["rgpa_weight"] = weight
        return weight
