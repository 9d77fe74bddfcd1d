"""Variational score distillation (VSD) as OSEDiff uses it, with RCOD's degradation-aware sampling.

Both score networks are the generator's own denoiser with adapters switched, so the frozen base
weights exist once:

* **real** score — every adapter disabled (the pretrained denoiser), classifier-free guidance with
  scale ``cfg_scale`` on its prediction: ``p = p_u + s·(p_c − p_u)``. The conditional embedding is
  what the generator saw (``out.cond``); the unconditional one embeds ``negative_prompt``;
* **fake** score — only the ``vsd_fake`` LoRA active, trained with the backbone's own denoising
  loss on sg(ẑ): MSE between its prediction and the parameterisation's target (ε for
  ε-prediction, v = ε − x₀ for flow matching).

Generator loss (OSEDiff): t ~ U[t_min, t_max), z_t = noised(sg(ẑ), ε, t) (√ᾱ·ẑ + √(1−ᾱ)·ε on
SD-2.1, (1−σ)·ẑ + σ·ε on SD3), x0 from both scores through the parameterisation,
w = mean_{C,H,W}|ẑ − x0_real|, loss = MSE(ẑ, sg(ẑ − (x0_fake − x0_real)/w)). Its gradient w.r.t. ẑ
is ``mse_scale · 2/N · (x0_fake − x0_real)/w`` (N = ẑ.numel()); OSEDiff's code uses plain
``F.mse_loss`` (``mse_scale = 1``), DMD2's uses 0.5. The timesteps are integers in [0, T) on every
backbone (σ = σ_t on flow matching).

DAS (RCOD, eq. 7): with ``das.enabled`` the timestep range follows the generator's own timestep
per sample, t_r ~ U[max(t_min, t−k), min(t_max, t+k)). Both ranges are half-open at ``t_max``
(OSEDiff's ``randint(20, 980)`` never draws 980), so DAS never leaves the plain range.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_sr.errors import ConfigError
from lit_sr.model.adapters import LoRASpec, as_spec
from lit_sr.model.condition import Condition, ConditionBuffer
from lit_sr.model.output import SROutput
from losses.base import LossTerm, OptimizerFactory

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _adapters_in_backward(adapters, denoiser: list[str]):
    """Gradient hook for the output of a denoiser pass run with the ``denoiser`` adapters: the
    backward pass that reaches it runs with those adapters active, and the adapters it found are
    restored when that backward ends.

    With ``model.gradient_checkpointing`` the denoiser blocks are recomputed in backward, which runs
    after :meth:`AdapterSet.using` has switched back to the generator's adapters: the recomputation
    would run the generator's LoRA instead of the fake one (wrong gradients for the fake score, or
    torch.utils.checkpoint's "different number of tensors" error when the two adapter sets differ in
    size, as in CODSR's alignment stage). The hook runs before any node of the pass (they all lie
    behind its output); without checkpointing nothing in backward reads the adapters, so the
    gradients are unchanged."""

    def hook(grad: torch.Tensor) -> None:
        found = {part: list(names) for part, names in adapters.active.items()}
        adapters.activate(denoiser=denoiser)
        torch.autograd.Variable._execution_engine.queue_callback(lambda: adapters.activate(found["denoiser"], found["vae"]))

    return hook


class VSDLoss(LossTerm):
    """OSEDiff's VSD regulariser on ẑ; owns the fake score LoRA (``own_parameters``/``aux_loss``).

    Args:
        cfg_scale: classifier-free guidance scale of the real score (OSEDiff: 7.5).
        negative_prompt: text of the unconditional branch (OSEDiff's README passes a long
            negative prompt; its code default is ""). null: the conditioner's own negative prompt
            (conditioning=text), else "". Embedded by the conditioner when it can
            (:meth:`Conditioner.prompt_embedding`), else by the backbone's text encoder at attach.
        t_min, t_max: timestep range [t_min, t_max) of the real/fake scores (OSEDiff: 20, 980).
        das: ``{enabled, k}`` — RCOD's degradation-aware sampling around the generator's t.
        real_dtype: ``fp32`` or ``bf16``/``fp16`` — autocast precision of the real score pass.
        mse_scale: factor on the MSE (1.0 as OSEDiff; 0.5 as DMD2).
        fake_lora: LoRA spec of the fake score adapter (rank, alpha, target_modules; null: rank 4 on
            the family's ``all`` targets, as OSEDiff).
        adapter_name: name of the fake adapter on the generator's denoiser.
        optimizer, grad_clip: the fake adapter's optimizer partial and gradient-norm clip (OSEDiff:
            AdamW, 5e-5, weight decay 1e-2, clipped at 1; the default when ``optimizer`` is None).
        aux_weight: weight of the fake score's ε-MSE (OSEDiff's ``lambda_vsd_lora``).
    """

    def __init__(
        self,
        weight: float = 1.0,
        cfg_scale: float = 7.5,
        negative_prompt: str | None = None,
        t_min: int = 20,
        t_max: int = 980,
        das: dict | None = None,
        real_dtype: str = "fp32",
        mse_scale: float = 1.0,
        fake_lora: dict | None = None,
        adapter_name: str = "vsd_fake",
        optimizer: OptimizerFactory | None = None,
        grad_clip: float | None = 1.0,
        aux_weight: float = 1.0,
    ) -> None:
        super().__init__(weight, optimizer, grad_clip)
        if not 0 <= t_min < t_max:
            raise ValueError(f"need 0 <= t_min < t_max, got t_min={t_min}, t_max={t_max}")
        if real_dtype not in _DTYPES:
            raise ValueError(f"real_dtype must be one of {sorted(_DTYPES)}, got {real_dtype!r}")
        das = dict(das or {})
        unknown = set(das) - {"enabled", "k"}
        if unknown:
            raise ValueError(f"unknown das key {sorted(unknown)[0]!r} (accepted: enabled, k)")
        self.das_enabled = bool(das.get("enabled", False))
        self.das_k = int(das.get("k", 250))
        if self.das_k < 0:
            raise ValueError(f"das.k must be >= 0, got {self.das_k}")
        self.cfg_scale = float(cfg_scale)
        self.negative_prompt = None if negative_prompt is None else str(negative_prompt)
        self.t_min, self.t_max = int(t_min), int(t_max)
        self.real_dtype = real_dtype
        self.mse_scale = float(mse_scale)
        self.fake_lora = dict(fake_lora) if fake_lora is not None else None
        if self.fake_lora is not None:
            as_spec(self.fake_lora)  # a bad rank or empty target list fails here, with the node's name
        self.adapter_name = str(adapter_name)
        self.aux_weight = float(aux_weight)
        self._generator: tuple = ()  # a reference, not a submodule: the denoiser belongs to the generator
        self.negative_embedding = ConditionBuffer()

    # ------------------------------------------------------------------ wiring
    @staticmethod
    def fake_spec(node: Any, presets: dict[str, list[str]]) -> LoRASpec:
        """The fake adapter's spec: the configured one, or OSEDiff's rank 4 on the family's ``all`` targets."""
        spec = node.get("fake_lora")
        return as_spec(spec if spec is not None else {"rank": 4, "target_modules": list(presets["all"])})

    @classmethod
    def generator_adapters(cls, node: Any, presets: dict[str, list[str]]) -> dict[str, LoRASpec]:
        return {str(node.get("adapter_name", "vsd_fake")): cls.fake_spec(node, presets)}

    def attach(self, generator, backbone=None) -> None:
        """Bind to the generator's denoiser (adding the fake adapter if missing) and embed the negative prompt."""
        self._generator = (generator,)
        if self.adapter_name not in generator.adapters.names("denoiser"):
            spec = self.fake_spec({"fake_lora": self.fake_lora}, generator.denoiser.lora_presets)
            generator.adapters.add("denoiser", self.adapter_name, spec)  # inactive and frozen
        self.negative_embedding.set(self._embed_negative(generator, backbone))

    @property
    def generator(self):
        if not self._generator:
            raise RuntimeError("VSDLoss used before attach(generator)")
        return self._generator[0]

    def _embed_negative(self, generator, backbone) -> Condition:
        """The (batch 1) unconditional condition: from the conditioner when it can embed the prompt,
        else from the backbone's prompt encoder."""
        cond = generator.conditioner
        prompt = self.negative_prompt if self.negative_prompt is not None else (cond.negative_prompt or "")
        emb = cond.prompt_embedding(prompt)
        if emb is None and backbone is not None and backbone.prompts is not None:
            emb = backbone.prompts.encode([prompt])
        if emb is None:
            raise ConfigError("loss.terms.vsd: cannot embed negative_prompt: needs the backbone's text encoder "
                              "(backbone.text_encoder=true) or a text conditioner")
        return emb

    def own_parameters(self) -> list[nn.Parameter]:
        if not self._generator:
            return []
        return list(self.generator.adapters.parameters("denoiser", self.adapter_name).values())

    def configure_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:  # OSEDiff's fake-score optimizer
            return torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-2)
        return self.optimizer_factory(params)

    # ------------------------------------------------------------------ pieces
    def sample_timesteps(self, t_gen: torch.Tensor | None, batch_size: int, device: torch.device,
                         rng: torch.Generator | None = None) -> torch.Tensor:
        """(B,) long t_r: U[t_min, t_max) (OSEDiff), or DAS's window around the generator's t."""
        u = torch.rand(batch_size, generator=rng, device=device, dtype=torch.float64)
        if not self.das_enabled or t_gen is None:
            return (self.t_min + (u * (self.t_max - self.t_min)).floor()).long().clamp_max(self.t_max - 1)
        t = t_gen.to(device).long().reshape(-1).expand(batch_size) if t_gen.numel() == 1 else t_gen.to(device).long()
        hi = (t + self.das_k).clamp(max=self.t_max - 1)  # inclusive end, inside the plain range [t_min, t_max)
        lo = torch.minimum((t - self.das_k).clamp(min=self.t_min), hi)  # t far outside the range: its nearest end
        return (lo + (u * (hi - lo + 1)).floor().long()).clamp(max=hi)

    def _predict(self, z: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        g = self.generator
        dtype = g.denoiser.dtype
        return g.denoise(z.to(dtype), t, cond.to(dtype)).float()

    def real_pred(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The CFG prediction of the pretrained denoiser (all adapters disabled)."""
        b = z_t.shape[0]
        neg = self.negative_embedding.get().to(device=z_t.device).expand(b)
        dtype = _DTYPES[self.real_dtype]
        cast = torch.autocast(z_t.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with self.generator.adapters.using(denoiser=[]), cast:
            if neg.matches(cond):  # one batched call for both branches
                p_u, p_c = self._predict(torch.cat([z_t, z_t]), torch.cat([t, t]), Condition.cat([neg, cond])).chunk(2)
            else:  # e.g. visual-token conditioning longer than the 77 text tokens
                p_u, p_c = self._predict(z_t, t, neg), self._predict(z_t, t, cond)
        return p_u + self.cfg_scale * (p_c - p_u)

    def fake_pred(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The fake score network's prediction (only the fake adapter active, in backward too)."""
        adapters = self.generator.adapters
        with adapters.using(denoiser=[self.adapter_name]):
            pred = self._predict(z_t, t, cond)
        if pred.requires_grad:  # aux_loss: its backward must see the fake adapter as the forward did
            pred.register_hook(_adapters_in_backward(adapters, [self.adapter_name]))
        return pred

    @torch.no_grad()
    def score_targets(self, z: torch.Tensor, cond: Condition, t: torch.Tensor,
                      noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0_real, x0_fake, w) for a detached latent ``z`` noised with ``noise`` at ``t``."""
        param = self.generator.parameterisation
        z = z.detach().float()
        z_t = param.noised(z, noise, t)
        x0_real = param.to_x0(self.real_pred(z_t, t, cond), z_t, t)
        x0_fake = param.to_x0(self.fake_pred(z_t, t, cond), z_t, t)
        # OSEDiff divides without an epsilon; the floor only guards an exactly-zero residual.
        w = (z - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        return x0_real, x0_fake, w

    # ------------------------------------------------------------------ losses
    def forward(self, out: SROutput, batch: dict) -> torch.Tensor:
        z = out.z_hat
        rng = batch.get("rng")
        t = self.sample_timesteps(out.t, z.shape[0], z.device, rng)
        noise = torch.randn(z.shape, generator=rng, device=z.device, dtype=torch.float32)
        x0_real, x0_fake, w = self.score_targets(z, out.cond.detach(), t, noise)
        target = z.detach().float() - (x0_fake - x0_real) / w
        return self.mse_scale * F.mse_loss(z.float(), target)

    def aux_loss(self, out: SROutput, batch: dict) -> torch.Tensor:
        """The fake score's denoising loss on sg(ẑ) noised at t ~ U[0, T) (OSEDiff's ``diff_loss``):
        MSE between its prediction and the parameterisation's target (ε, v or ε − x₀)."""
        param = self.generator.parameterisation
        z = out.z_hat.detach().float()
        rng = batch.get("rng")
        t = torch.randint(0, param.num_train_timesteps, (z.shape[0],), generator=rng, device=z.device)
        noise = torch.randn(z.shape, generator=rng, device=z.device, dtype=torch.float32)
        pred = self.fake_pred(param.noised(z, noise, t), t, out.cond.detach())
        return self.aux_weight * F.mse_loss(pred, param.target(z, noise, t))

    def extra_repr(self) -> str:
        return (f"cfg_scale={self.cfg_scale}, t=[{self.t_min}, {self.t_max}), das={self.das_enabled} (k={self.das_k}), "
                f"adapter={self.adapter_name!r}, real_dtype={self.real_dtype}")

