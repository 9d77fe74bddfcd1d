"""SRSystem: the LightningModule that wires a generator, loss terms, stages and optimizers.

It contains no architecture: the generator, each loss term and the validation metrics are
injected modules. Optimisation is manual so that loss terms owning their own networks (VSD's
fake score, a GAN discriminator) can take their own optimizer step after the generator's.

Trainability is managed explicitly, never left to peft (whose ``set_adapter`` flips
``requires_grad``):

* generator step — only the parameters of the current stage's units (UNet adapters, VAE
  adapters, modules) require grad; loss-term networks do not;
* aux step of a term — only that term's own parameters require grad (restored afterwards).

The generator optimizer has one parameter group per unit trained in *any* stage, so its layout
(and the checkpoint's optimizer state) is the same in every stage; a stage switch only changes
``requires_grad`` and the groups' learning rates (0 for frozen units, whose gradients are None and
are skipped by AdamW anyway). ``trainer.global_step`` counts generator steps only (loss-term
optimizers step through the strategy without advancing it), so one step is one iteration and the
stage of a resumed run follows from it.

Loss terms receive the batch plus ``rng``: the system's per-rank ``torch.Generator`` (saved in
checkpoints), for their own noise and timesteps.

Checkpoints hold only what training changes (adapters, modulation, conditioner MLPs, loss-term
networks, optimizer and RNG state), not the frozen backbone: a Stable Diffusion checkpoint is a
few MB instead of several GB.
"""
from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import lightning as L
import torch
from torch import nn

from lit_sr.model import adapters as lora_lib
from lit_sr.model.blend import blend
from lit_sr.model.generator import OneStepSR
from lit_sr.model.output import SROutput
from lit_sr.systems.stages import MODULE_KEYS, Stage, StageSchedule, parse_stages
from losses.base import LossTerm

log = logging.getLogger(__name__)

_NOT_MODULES = ("unet", "vae", "noise")  # generator children that are backbone or parameter-free


class SRSystem(L.LightningModule):
    """Trains a :class:`OneStepSR` with a weighted sum of :class:`LossTerm` s, stage by stage.

    Args:
        generator: the model being trained.
        losses: named loss terms; terms with an ``attach`` method are bound to the generator.
        lr, weight_decay, betas, grad_clip: the generator's AdamW and gradient-norm clipping.
        val_metrics: metric suite updated in validation.
        seed: seed of the per-rank noise generator.
        config: the plain composed config (stored as hyperparameters).
        stages: the ``stages`` config node (list of mappings, see :mod:`lit_sr.systems.stages`); None or
            empty: one implicit stage training everything.
        backbone: pretrained parts handed to ``attach`` of terms that ask for it (VSD's
            negative-prompt embedding); not kept.
    """

    def __init__(
        self,
        generator: OneStepSR,
        losses: dict[str, LossTerm],
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        grad_clip: float | None = 1.0,
        val_metrics: nn.Module | None = None,
        seed: int = 0,
        config: dict | None = None,
        stages: list | None = None,
        backbone: Any = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold trainable state only; checked in on_load_checkpoint
        if not losses:
            raise ValueError("loss.terms is empty: nothing to train")
        self.generator = generator
        self.losses = nn.ModuleDict(losses)
        self.lr, self.weight_decay, self.betas = float(lr), float(weight_decay), tuple(betas)
        self.grad_clip = grad_clip
        self.val_metrics = val_metrics
        self.seed = int(seed)
        self.config = config or {}
        # Hyperparameters are the plain config; the networks are not (they are modules).
        self.save_hyperparameters({"config": self.config})
        self._noise_gen: torch.Generator | None = None
        self._skipped_epoch = 0
        for term in self.losses.values():
            _attach(term, generator, backbone)
        # Loss-term networks (some live inside the generator, e.g. VSD's fake adapter) train only
        # in their own aux step.
        self._own: dict[str, list[nn.Parameter]] = {n: t.own_parameters() for n, t in self.losses.items()}
        own_ids = {id(p) for ps in self._own.values() for p in ps}
        for ps in self._own.values():
            for p in ps:
                p.requires_grad_(False)
        self._units = self._collect_units(own_ids)
        self._default_active = list(generator.active_unet)
        self.schedule = StageSchedule(parse_stages(stages))
        for i, stage in enumerate(self.schedule.stages):
            self._check_stage(i, stage)
        self._stage_idx: int | None = None
        self._active_terms: dict[str, float] = {}
        self._train_units: set[str] = set()
        self._gen_optimizer: torch.optim.Optimizer | None = None
        self._group_of: dict[str, int] = {}
        self.enter_stage(0)

    @property
    def partial_backward(self) -> bool:
        """True when a backward pass can miss trained parameters (stages, terms with own networks)."""
        return len(self.schedule) > 1 or any(bool(ps) for ps in self._own.values())

    # ------------------------------------------------------------------ units & stages
    def _collect_units(self, own_ids: set[int]) -> dict[str, list[nn.Parameter]]:
        """Trainable units: ``unet:<adapter>``, ``vae:<adapter>``, ``module:<child>``."""
        g = self.generator
        units: dict[str, list[nn.Parameter]] = {}
        for name in g.unet_adapters:
            units[f"unet:{name}"] = list(lora_lib.adapter_parameters(g.unet, name).values())
        for name in g.vae_adapters:
            units[f"vae:{name}"] = list(lora_lib.adapter_parameters(g.vae, name).values())
        for child, module in g.named_children():
            if child in _NOT_MODULES:
                continue
            # The parameters the component itself leaves trainable (not, e.g., a frozen CLIP encoder).
            params = [p for p in module.parameters() if p.requires_grad and id(p) not in own_ids]
            if params:
                units[f"module:{child}"] = params
        return units

    def _stage_units(self, stage: Stage) -> list[str]:
        if stage.implicit:
            return list(self._units)
        names = [f"unet:{a}" for a in stage.train_adapters or []]
        names += [f"vae:{a}" for a in stage.train_vae_adapters or []]
        names += [f"module:{m}" for m in stage.train_modules or []]
        return names

    def _check_stage(self, i: int, stage: Stage) -> None:
        key = f"stages[{i}]"
        g = self.generator
        for a in [*(stage.train_adapters or []), *stage.freeze, *(stage.active_adapters or [])]:
            if a not in g.unet_adapters:
                raise ValueError(f"{key}: unknown UNet adapter {a!r}; generator has {g.unet_adapters}")
        for a in stage.train_vae_adapters or []:
            if a not in g.vae_adapters:
                raise ValueError(f"{key}: unknown VAE adapter {a!r}; generator has {g.vae_adapters}")
        for m in stage.train_modules or []:
            if f"module:{m}" not in self._units:
                raise ValueError(f"{key}: module {m!r} has no trainable parameters (accepted: "
                                 f"{', '.join(sorted(MODULE_KEYS))} when configured)")
        for t in stage.losses or {}:
            if t not in self.losses:
                raise ValueError(f"{key}: unknown loss term {t!r}; have {sorted(self.losses)}")
        if stage.blend is not None and stage.blend.fidelity not in g.endpoint_adapters:
            raise ValueError(f"{key}: blend needs model.endpoints[{stage.blend.fidelity!r}]")
        if not self._stage_units(stage):
            raise ValueError(f"{key} trains nothing")

    @property
    def stage_index(self) -> int:
        return int(self._stage_idx or 0)

    @property
    def stage(self) -> Stage:
        return self.schedule[self.stage_index]

    def enter_stage(self, index: int) -> None:
        """Apply stage ``index``: trainability, active adapters, learning rates and loss terms."""
        stage = self.schedule[index]
        train = set(self._stage_units(stage))
        # Adapters first: peft's disable path rewrites requires_grad, the flags below are final.
        active = stage.active_unet(self.generator.unet_adapters)
        self.generator.use_adapters(self._default_active if active is None else active,
                                    getattr(self.generator, "active_vae", None))
        self._train_units = train
        self._apply_trainability()
        if self._gen_optimizer is not None:
            for unit, gi in self._group_of.items():
                self._gen_optimizer.param_groups[gi]["lr"] = (stage.lr or self.lr) if unit in train else 0.0
        weights = {n: float(t.weight if stage.losses is None or stage.losses.get(n) is None else stage.losses[n])
                   for n, t in self.losses.items() if stage.losses is None or n in stage.losses}
        self._active_terms = {n: w for n, w in weights.items() if w != 0.0}  # weight 0: off in this stage
        if self._stage_idx is not None and index != self._stage_idx:
            log.info("stage %d/%d '%s' starts at step %d: training %s", index + 1, len(self.schedule), stage.name,
                     self._global_step(), ", ".join(sorted(train)))
        self._stage_idx = index

    def _apply_trainability(self) -> None:
        """Exactly the current stage's units require grad (re-applied every step: peft's adapter
        disabling, e.g. inside the generator's HQ-latent encode, silently rewrites the flags)."""
        for p in self.generator.parameters():
            p.requires_grad_(False)
        for unit in self._train_units:
            for p in self._units[unit]:
                p.requires_grad_(True)

    def _global_step(self) -> int:
        return int(self.trainer.global_step) if self._trainer is not None else 0

    def _sync_stage(self) -> None:
        index = self.schedule.index(self._global_step())
        if index != self._stage_idx:
            self.enter_stage(index)

    # ------------------------------------------------------------------ setup
    def configure_optimizers(self):
        trained = []  # units trained in some stage, in a fixed order → stable optimizer layout
        for stage in self.schedule.stages:
            trained += [u for u in self._stage_units(stage) if u not in trained]
        groups, self._group_of = [], {}
        for unit in trained:
            if self._units[unit]:
                self._group_of[unit] = len(groups)
                groups.append({"params": self._units[unit], "name": unit})
        if not groups:
            raise ValueError("no trainable parameters: check lora/modulation/conditioning settings")
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        self._gen_optimizer = opt
        optimizers = [opt]
        for term in self.losses.values():
            own = term.own_parameters()
            if own:
                optimizers.append(term.configure_optimizer(own))
        self.enter_stage(self.stage_index)  # learning rates of the current stage
        return optimizers

    def setup(self, stage: str) -> None:
        # DDP registers only parameters that require grad when it wraps the model: make every
        # parameter trained in some stage (or by a loss term) visible to it; on_train_start then
        # applies the real stage. Stage switches and aux steps need find_unused_parameters=True.
        if stage == "fit" and self._trainer is not None and self.trainer.world_size > 1:
            for params in [*self._units.values(), *self._own.values()]:
                for p in params:
                    p.requires_grad_(True)

    def on_fit_start(self) -> None:
        # Per-rank generator: ranks draw different noise, runs with the same seed draw the same.
        self._noise_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1_000_003 * self.global_rank)

    @property
    def noise_generator(self) -> torch.Generator:
        if self._noise_gen is None or self._noise_gen.device != self.device:
            self._noise_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1_000_003 * self.global_rank)
        return self._noise_gen

    # ------------------------------------------------------------------ training
    def forward_train(self, batch: dict) -> SROutput:
        """The generator pass of the current stage (a γ-blend with the frozen endpoint in IFCSR stage 2)."""
        rng = self.noise_generator
        out = self.generator.step(batch["lq"], hq=batch["hq"], batch=batch, generator=rng)
        spec = self.stage.blend
        if spec is None:
            return out
        with torch.no_grad():  # the fidelity endpoint is frozen: no graph, no gradient
            x_fid = self.generator.endpoint_step(spec.fidelity, batch["lq"], hq=batch["hq"], batch=batch,
                                                 generator=rng).sr
        b = out.sr.shape[0]
        if spec.gamma == "uniform":
            gamma = torch.rand(b, generator=rng, device=rng.device).to(out.sr.device)
        else:
            gamma = torch.full((b,), float(spec.gamma), device=out.sr.device)
        return replace(out, sr=blend(x_fid.to(out.sr.dtype), out.sr, gamma),
                       extras={**out.extras, "gamma": gamma, "sr_fidelity": x_fid, "sr_realism": out.sr})

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._sync_stage()
        self._apply_trainability()
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        gen_opt, term_opts = opts[0], iter(opts[1:])
        term_opt = {n: next(term_opts) for n in self.losses if self._own[n]}
        bs = batch["lq"].shape[0]
        out = self.forward_train(batch)
        loss_batch = {**batch, "rng": self.noise_generator}
        total = torch.zeros((), device=self.device)
        for name, weight in self._active_terms.items():
            value = self.losses[name](out, loss_batch)
            total = total + weight * value
            self.log(f"train/{name}", value.detach(), batch_size=bs)
        gen_opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        if self.grad_clip:
            self.clip_gradients(gen_opt, gradient_clip_val=float(self.grad_clip), gradient_clip_algorithm="norm")
        gen_opt.step()
        gen_opt.zero_grad(set_to_none=True)  # free them now; the aux steps must add none
        # Terms with their own networks update them after the generator step, on detached outputs.
        for name in self._active_terms:
            if not self._own[name]:
                continue
            term, opt = self.losses[name], term_opt[name]
            with self._only_trainable(self._own[name]):
                aux = term.aux_loss(out, loss_batch, self)
                opt.zero_grad(set_to_none=True)
                self.manual_backward(aux)
                clip = getattr(term, "grad_clip", self.grad_clip)
                if clip:
                    self.clip_gradients(opt, gradient_clip_val=float(clip), gradient_clip_algorithm="norm")
                # Through the strategy (precision plugin included) but not LightningOptimizer.step,
                # which would advance global_step once more per iteration.
                self.trainer.strategy.optimizer_step(opt.optimizer, closure=_no_closure)
            self.log(f"train/{name}_aux", aux.detach(), batch_size=bs)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
        self.log("train/stage", float(self.stage_index), batch_size=bs)
        self._sync_stage()  # global_step has advanced: the next batch (and its lr logging) sees the next stage
        if "skipped" in batch:
            self._skipped_epoch += int(batch["skipped"].sum())
        return total.detach()

    @contextmanager
    def _only_trainable(self, params: list[nn.Parameter]):
        """Exactly ``params`` require grad inside; every flag is restored on exit."""
        everything = list(self.parameters())
        flags = [p.requires_grad for p in everything]
        for p in everything:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        try:
            yield
        finally:
            for p, flag in zip(everything, flags):
                p.requires_grad_(flag)

    def on_train_start(self) -> None:
        self.enter_stage(self.schedule.index(self._global_step()))
        state = getattr(self, "_pending_rng", None)
        if state is not None:
            self.noise_generator.set_state(state.to(self.noise_generator.device) if self.device.type != "cpu" else state)
            self._pending_rng = None

    def on_train_epoch_end(self) -> None:
        skipped = torch.tensor(float(self._skipped_epoch), device=self.device)
        skipped = self.all_gather(skipped).sum() if self.trainer.world_size > 1 else skipped
        if skipped > 0 and self.global_rank == 0:
            log.warning("epoch %d: skipped %d unreadable or too-small training images (see warnings above)",
                        self.current_epoch, int(skipped))
        self.log("data/skipped", skipped, reduce_fx="sum", sync_dist=False)
        self._skipped_epoch = 0

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        g = self.generator
        if g.has_endpoints and self.stage.blend is None:  # e.g. IFCSR stage 1: the adapters this stage trains
            sr = g.step(batch["lq"], batch=batch).sr
        else:  # an endpoint model blends at model.gamma
            sr = g(batch["lq"], batch=batch)
        if self.val_metrics is not None:
            self.val_metrics.update(sr.float(), batch["hq"].float())
        return {"sr": sr.detach()}

    def on_validation_epoch_end(self) -> None:
        if self.val_metrics is None:
            return
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        for name, value in values.items():
            self.log(f"val/{name}", float(value), sync_dist=False, rank_zero_only=False)

    # ------------------------------------------------------------------ checkpoints
    def _trainable_keys(self) -> set[str]:
        keys = {f"generator.{k}" for k in self.generator.trainable_state_dict()}
        # Own networks by identity: VSD's fake adapter is registered under the generator's UNet.
        own_ids = {id(p) for ps in self._own.values() for p in ps}
        keys |= {n for n, p in self.named_parameters(remove_duplicate=False) if id(p) in own_ids}
        state = self.state_dict(keep_vars=True)
        for name, params in self._own.items():
            if params:  # a term's own network: its buffers too (e.g. spectral-norm vectors)
                keys |= {k for k in state if k.startswith(f"losses.{name}.")}
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keys = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        checkpoint["lit_sr"] = {"noise_rng": self.noise_generator.get_state().cpu(), "version": 1,
                                "stage": self.stage_index}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = self._trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}: "
                             "it was written by a different model configuration")
        state = checkpoint.get("lit_sr", {}).get("noise_rng")
        if state is not None:
            self._pending_rng = state


def _no_closure() -> None:
    return None


def _attach(term: LossTerm, generator: OneStepSR, backbone: Any) -> None:
    """Call ``term.attach(generator[, backbone])`` when the term defines it."""
    attach = getattr(term, "attach", None)
    if not callable(attach):
        return
    if backbone is not None and "backbone" in inspect.signature(attach).parameters:
        attach(generator, backbone=backbone)
    else:
        attach(generator)
