"""The one-step path as one tensors-only module: what the ONNX graph is made of.

:class:`OnePass` runs exactly the inference pass of :meth:`OneStepSR.step` — bicubic ×s, pad to
the size multiple, VAE encoder (full or distilled), the noise strategy's denoiser input at
timestep ``t``, the denoiser (LoRA fused first), ẑ, the decoder (full or distilled), crop and
the model's colour fix — with nothing that an exported graph cannot hold:

* the condition is computed once when the module is built (the conditioner's answer for an
  image without a prompt: the fixed prompt of ``conditioning=empty`` / ``text``);
* the timestep is an input ``t`` (int64, one per image), so one graph serves every knob;
* strategies that inject noise (``noised``, ``rgpa``) take the standard normal noise as an input
  ``noise`` of the latent's shape (a graph cannot draw torch's random numbers; the caller draws
  them as the PyTorch pipeline does, so both give the same image).

:func:`unsupported` names, in one line, what a generator has that such a graph cannot hold.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_sr.model.colorfix import color_fix
from lit_sr.model.condition import Condition
from lit_sr.model.conditioning.text import TextConditioner
from lit_sr.model.conditioning.vpim import VPIMConditioner
from lit_sr.model.noise.base import NoiseContext
from lit_sr.model.noise.noised import NoisedLatent


def unsupported(generator: nn.Module) -> str | None:
    """Why ``generator`` cannot become one graph (None: it can)."""
    cond = generator.conditioner
    if generator.has_endpoints:
        return ("endpoint (IFCSR) models run two adapter sets per image and blend them; a graph holds one: "
                "not supported")
    if isinstance(cond, VPIMConditioner):
        return "conditioning=vpim computes the condition from each image with the CLIP vision tower: not supported"
    if isinstance(cond, TextConditioner) and cond.prompt_map:
        return ("conditioning=text with a prompt file conditions each image on its own prompt; the graph holds one "
                "fixed prompt: not supported (conditioning.prompt_file=null uses conditioning.prompt)")
    return None


class OnePass(nn.Module):
    """``(lq, t[, noise]) → sr``: the generator's inference pass (see the module docstring)."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        problem = unsupported(generator)
        if problem:
            raise ValueError(problem)
        self.generator = generator
        self.draws_noise = isinstance(generator.noise, NoisedLatent)
        with torch.no_grad():
            ref = next(generator.vae.parameters())
            probe = torch.zeros(1, 3, generator.size_multiple, generator.size_multiple, device=ref.device)
            cond = generator.conditioner(probe, None)
        # Buffers, so the graph holds them as constants and .to() moves them.
        self.register_buffer("tokens", cond.tokens.detach().clone(), persistent=False)
        self.register_buffer("pooled", None if cond.pooled is None else cond.pooled.detach().clone(), persistent=False)

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The shape of ``noise`` for an LQ batch of ``height`` × ``width`` images."""
        g = self.generator
        m, f = g.size_multiple, g.vae_scale_factor
        h, w = height * g.scale, width * g.scale
        return batch, g.vae.channels, -(-h // m) * m // f, -(-w // m) * m // f

    def forward(self, lq: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        g = self.generator
        lq_up = g.upsample(lq)
        h, w = lq_up.shape[-2:]
        m = g.size_multiple
        # Reflect padding as model_input does; inputs are at least one size multiple, so reflect always applies.
        x = F.pad(lq_up * 2 - 1, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        z_lq = g.encode(x)
        ctx = NoiseContext(lq_up=x, z_lq=z_lq, training=False, eps=noise)
        z_in = g.noise.denoiser_input(ctx, t)
        batch = lq.shape[0]
        cond = Condition(self.tokens.expand(batch, -1, -1),
                         None if self.pooled is None else self.pooled.expand(batch, -1)).to(z_in.dtype)
        pred = g.denoise(z_in, t, cond, g.modulation_maps(x, t))
        z_hat = g.noise.to_x0(ctx, t, z_in, pred)
        sr = (g.decode(z_hat)[..., :h, :w] + 1) / 2
        if g.color_fix != "none":
            sr = color_fix(sr.float(), lq_up.float(), g.color_fix)
        return sr
