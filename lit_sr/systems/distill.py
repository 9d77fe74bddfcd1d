"""DistillSystem: small VAE halves learn a trained generator's own VAE (``experiment=distill_vae``).

The generator is frozen and held outside the module tree (like the MEM trainer's): it only makes
the teacher signals, on the training data and at the knobs it will be used at.

* **decoder** — the generator's own ẑ of each batch (one knob per step, drawn from ``knobs``)
  and the frozen decoder's image of it; the small decoder's image of the same ẑ is pulled
  towards it with an L1 pixel term, an LPIPS term and, optionally, an adversarial term (a patch
  discriminator that sees the teacher's image as real);
* **encoder** — the trained (LoRA-adapted) encoder's latent of the upsampled LQ (the posterior
  mode, normalised); the small encoder regresses it (MSE).

Validation logs, against the teacher on the validation images at the default knob:
``val/decoder_psnr`` (small vs full decoder image of the same ẑ), ``val/encoder_mse`` (latent),
``val/sr_psnr`` (the whole pass with every distilled part swapped in vs the full pass).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lit_sr.model.conditioning.frozen import FrozenModule
from lit_sr.model.distilled import swapped_in
from lit_sr.model.small_vae import SmallDecoder, SmallEncoder
from losses.base import LossTerm

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [0, 1]."""
    mse = (a.float() - b.float()).square().flatten(1).mean(1).clamp_min(1e-12)
    return -10 * torch.log10(mse)


class DistillSystem(L.LightningModule):
    """Trains a :class:`SmallDecoder` and/or :class:`SmallEncoder` against a frozen generator.

    Args:
        generator: the trained generator (frozen; its VAE is the teacher).
        decoder, encoder: the students (None: that half is not distilled; at least one).
        pixel_weight, lpips_weight: weights of the decoder's L1 and LPIPS terms.
        lpips: the LPIPS network (frozen; None: no LPIPS term).
        gan: an adversarial term (:class:`losses.gan.GANLoss`) owning its discriminator, or None.
        encoder_weight: weight of the encoder's latent MSE.
        knobs: the knobs the decoder's ẑ is drawn at (None: the model's default knob).
        optimizer: the students' optimizer, a partial taking the parameters (None: AdamW, lr 1e-3).
        grad_clip: gradient-norm clip of the students and the discriminator (None: off).
        seed: seed of the knob draws and the noise some strategies inject.
        config: the plain composed config (stored as hyperparameters).
        source, source_config: the generator's export (or checkpoint) and its config (what the export
            callback copies, or exports from a checkpoint).
    """

    def __init__(self, generator: nn.Module, decoder: SmallDecoder | None = None, encoder: SmallEncoder | None = None,
                 pixel_weight: float = 1.0, lpips_weight: float = 0.1, lpips: nn.Module | None = None,
                 gan: LossTerm | None = None, encoder_weight: float = 1.0, knobs: list[Any] | None = None,
                 optimizer: OptimizerFactory | None = None, scheduler: Any = None, grad_clip: float | None = 1.0,
                 seed: int = 0,
                 config: dict | None = None, source: str | None = None, source_config: dict | None = None) -> None:
        super().__init__()
        if decoder is None and encoder is None:
            raise ValueError("nothing to distil: set distill.decoder and/or distill.encoder")
        self.automatic_optimization = False  # the students' step, then the discriminator's
        self._generator = FrozenModule(generator)
        self.decoder, self.encoder = decoder, encoder
        for student in (decoder, encoder):
            if student is not None:
                student.check_latent(generator.vae.channels, generator.vae.factor)
        self.pixel_weight, self.lpips_weight, self.encoder_weight = float(pixel_weight), float(lpips_weight), \
            float(encoder_weight)
        self._lpips = FrozenModule(lpips) if lpips is not None and self.lpips_weight > 0 else None
        self.gan = gan
        self.knobs = [generator.noise.parse_knob(k) for k in (knobs if knobs else [None])]
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler  # a partial building an LR scheduler on the students' optimizer (None: constant)
        self.grad_clip = grad_clip
        self.seed = int(seed)
        self.config = config or {}
        self.source, self.source_config = source, source_config
        self.save_hyperparameters({"config": self.config})
        self._rng: torch.Generator | None = None

    partial_backward = False  # every student parameter is in every backward

    @property
    def generator(self) -> nn.Module:
        return self._generator.module

    def students(self) -> dict[str, nn.Module]:
        return {name: m for name, m in (("decoder", self.decoder), ("encoder", self.encoder)) if m is not None}

    def averaged_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.students().values() for p in m.parameters()]

    def configure_optimizers(self):
        params = self.averaged_parameters()
        opt = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.AdamW(params, lr=1e-3)
        opts = [opt] if self.gan is None else [opt, self.gan.configure_optimizer(self.gan.own_parameters())]
        if self.scheduler_factory is None:
            return opts if len(opts) > 1 else opt
        return opts, [{"scheduler": self.scheduler_factory(opt), "interval": "step"}]  # stepped in training_step

    @property
    def rng(self) -> torch.Generator:
        if self._rng is None or self._rng.device != self.device:
            self._rng = torch.Generator(device=self.device).manual_seed(self.seed + 1_000_003 * self.global_rank)
        return self._rng

    # ------------------------------------------------------------------ teacher
    def teacher(self, lq: torch.Tensor, knob: Any, rng: torch.Generator | None):
        """The generator's pass at ``knob`` and the full decoder's raw image of its ẑ, in [-1, 1]."""
        g = self._generator.on(lq)
        with torch.no_grad():
            out = g.step(lq, knob=knob, generator=rng)
            return out, g.decode(out.z_hat)

    def _knob(self) -> Any:
        i = int(torch.randint(len(self.knobs), (1,), generator=self.rng, device=self.rng.device))
        return self.knobs[i]

    # ------------------------------------------------------------------ training
    def student_losses(self, out, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted loss terms of the students for one teacher pass (``out``, ``target`` image in [-1, 1])."""
        terms: dict[str, torch.Tensor] = {}
        if self.decoder is not None:
            pred = self.decoder(out.z_hat.float())
            terms["pixel"] = F.l1_loss(pred, target.float())
            fake, real = (pred + 1) / 2, (target.float() + 1) / 2
            if self._lpips is not None:
                terms["lpips"] = self._lpips.on(pred)(fake, real).mean()
            if self.gan is not None:
                terms["gan"] = self.gan(dataclasses.replace(out, sr=fake), {"hq": real})
        if self.encoder is not None:
            z = self.encoder(self.generator.model_input(out.lq_up).float())
            terms["encoder_mse"] = F.mse_loss(z, out.z_lq.float())
        return terms

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = {"pixel": self.pixel_weight, "lpips": self.lpips_weight, "encoder_mse": self.encoder_weight,
                   "gan": self.gan.weight if self.gan is not None else 0.0}
        return sum((weights[k] * v for k, v in terms.items()), torch.zeros((), device=self.device))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        lq = batch["lq"]
        bs = lq.shape[0]
        out, target = self.teacher(lq, self._knob(), self.rng)
        terms = self.student_losses(out, target)
        total = self.weighted(terms)
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), batch_size=bs)
        opts[0].zero_grad(set_to_none=True)
        self.manual_backward(total)
        self._clip(opts[0])
        opts[0].step()
        if self.scheduler_factory is not None:  # manual optimisation: Lightning leaves the schedule to the step
            self.lr_schedulers().step()
        if self.gan is not None and self.decoder is not None:  # the discriminator: teacher image real, student fake
            with torch.no_grad():
                fake = (self.decoder(out.z_hat.float()) + 1) / 2
            aux = self.gan.aux_loss(dataclasses.replace(out, sr=fake), {"hq": (target.float() + 1) / 2})
            opts[1].zero_grad(set_to_none=True)
            self.manual_backward(aux)
            self._clip(opts[1])
            opts[1].step()
            self.log("train/gan_aux", aux.detach(), batch_size=bs)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
        return total.detach()

    def _clip(self, opt) -> None:
        if self.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=float(self.grad_clip), gradient_clip_algorithm="norm")

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        lq = batch["lq"]
        bs = lq.shape[0]
        seed = torch.Generator(device=lq.device).manual_seed(self.seed)  # the same noise for both passes
        out, target = self.teacher(lq, None, seed)
        g = self.generator
        h, w = out.lq_up.shape[-2:]
        if self.decoder is not None:
            pred = self.decoder.decode(out.z_hat.float())
            self.log("val/decoder_psnr", psnr((pred[..., :h, :w] + 1) / 2, (target[..., :h, :w] + 1) / 2).mean(),
                     batch_size=bs, sync_dist=True)
        if self.encoder is not None:
            z = self.encoder(g.model_input(out.lq_up).float())
            self.log("val/encoder_mse", F.mse_loss(z, out.z_lq.float()), batch_size=bs, sync_dist=True)
        with swapped_in(g, self.decoder, self.encoder):
            sr = g.step(lq, generator=torch.Generator(device=lq.device).manual_seed(self.seed)).sr
        self.log("val/sr_psnr", psnr(sr, out.sr).mean(), prog_bar=True, batch_size=bs, sync_dist=True)
