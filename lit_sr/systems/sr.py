"""SRSystem: the LightningModule that wires a generator, loss terms, stages and optimizers.

It contains no architecture: the generator, each loss term and the validation metrics are
injected modules, and the stage plan (:class:`~lit_sr.systems.stages.StagePlan`) says what each
stage trains. Optimisation is manual so that loss terms owning their own networks (VSD's fake
score, a GAN discriminator) can take their own optimizer step after the generator's.

* Trainability is set once per stage (:func:`~lit_sr.model.adapters.train_only`): adapter
  switches never touch ``requires_grad`` (:class:`~lit_sr.model.adapters.AdapterSet`), so
  nothing is re-applied per step. A term's own networks train only inside its aux step.
* The generator optimizer has one parameter group per unit trained in *any* stage, so its layout
  (and the checkpoint's optimizer state) is the same in every stage; a stage switch changes the
  groups' base learning rates (0 for frozen units, whose gradients are None and are skipped).
* Gradient accumulation (``optim.accumulate_grad_batches`` = N): every batch adds loss/N to the
  gradients; the optimizers step every N-th batch. ``trainer.global_step`` counts generator
  optimizer steps only (loss-term optimizers step through the strategy without advancing it),
  so stages, schedulers and ``max_steps`` count optimizer steps.

Loss terms receive the batch plus ``rng``: the system's per-rank ``torch.Generator`` (saved in
checkpoints), for their own noise and timesteps.

Checkpoints hold only what training changes (adapters, modulation, conditioner MLPs, loss-term
networks, optimizer and RNG state), not the frozen backbone: a Stable Diffusion checkpoint is a
few MB instead of several GB.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from lit_sr.lightning_access import forget_logged
from lit_sr.model.adapters import only_trainable, train_only
from lit_sr.model.blend import blend
from lit_sr.model.generator import OneStepSR
from lit_sr.model.output import SROutput
from lit_sr.systems.calibration import calibrate_noise
from lit_sr.systems.distributed import gather_objects
from lit_sr.systems.guard import FiniteGuard
from lit_sr.systems.stages import Stage, StagePlan
from losses.base import LossTerm

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]

SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class SRSystem(L.LightningModule):
    """Trains a :class:`OneStepSR` with a weighted sum of :class:`LossTerm` s, stage by stage.

    Args:
        generator: the model being trained.
        losses: named loss terms, bound to the generator with ``attach``.
        optimizer: the generator's optimizer, a partial taking the parameter groups and ``lr``
            (None: AdamW).
        lr: base learning rate (a stage may set its own).
        scheduler: a partial building a ``LambdaLR`` on the generator optimizer (None: constant).
        grad_clip: gradient-norm clip of the generator (None: off); terms may set their own.
        accumulate_grad_batches: optimizer step every N batches.
        max_nonfinite_steps: skipped non-finite steps tolerated before training stops.
        val_metrics: metric suite updated in validation.
        seed: seed of the per-rank noise generator.
        config: the plain composed config (stored as hyperparameters).
        stages: typed stages (:class:`Stage`); None or empty: one implicit stage training everything.
        backbone: pretrained parts handed to the terms' ``attach``; not kept.
    """

    def __init__(
        self,
        generator: OneStepSR,
        losses: dict[str, LossTerm],
        optimizer: OptimizerFactory | None = None,
        lr: float = 5e-5,
        scheduler: SchedulerFactory | None = None,
        grad_clip: float | None = 1.0,
        accumulate_grad_batches: int = 1,
        max_nonfinite_steps: int = 10,
        val_metrics: nn.Module | None = None,
        val_baseline: nn.Module | None = None,
        seed: int = 0,
        config: dict | None = None,
        stages: list[Stage] | None = None,
        backbone: Any = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold trainable state only; checked in on_load_checkpoint
        if not losses:
            raise ValueError("loss.terms is empty: nothing to train")
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        self.generator = generator
        self.losses = nn.ModuleDict(losses)
        self.optimizer_factory = optimizer or torch.optim.AdamW
        self.scheduler_factory = scheduler
        self.lr = float(lr)
        self.grad_clip = grad_clip
        self.accumulate = int(accumulate_grad_batches)
        self.val_metrics = val_metrics
        self.val_baseline = val_baseline  # the same fidelity metrics on bicubic upsampling of the LQ
        self.seed = int(seed)
        self.config = config or {}
        # Hyperparameters are the plain config; the networks are not (they are modules).
        self.save_hyperparameters({"config": self.config})
        self._noise_gen: torch.Generator | None = None
        self._pending_rng: torch.Tensor | None = None  # restored from a checkpoint at train start
        self._calibration: dict[str, Any] = {}  # noise settings derived from the training data
        self._bad_files: set[str] = set()  # unusable training files seen (reported once per epoch)
        self.guard = FiniteGuard(max_nonfinite_steps, lr)
        self._loss_finite = True  # over the batches accumulated since the last step
        self._aux_finite: dict[str, bool] = {}
        for term in self.losses.values():
            term.attach(generator, backbone)
        self._own: dict[str, list[nn.Parameter]] = {n: t.own_parameters() for n, t in self.losses.items()}
        own_ids = {id(p) for ps in self._own.values() for p in ps}
        self.plan = StagePlan(stages or [], generator, dict(self.losses), exclude=own_ids)
        if not self.plan.trained_units:
            raise ValueError("no trainable parameters: check lora/modulation/conditioning settings")
        self._stage_idx: int | None = None
        self._active_terms: dict[str, float] = {}
        self._micro = 0  # batches accumulated since the last optimizer step
        self.enter_stage(0)
        # Training mode for everything: the frozen parts have no dropout or batch norm, and the
        # UNet/VAE only checkpoint their activations in training mode. Lightning switches to eval
        # for validation and back.
        self.train()

    def averaged_parameters(self) -> list[nn.Parameter]:
        """The generator parameters trained in some stage (what an EMA averages; see callbacks/ema.py)."""
        return [p for unit in self.plan.trained_units for p in self.plan.units[unit]]

    @property
    def partial_backward(self) -> bool:
        """True when a backward pass can miss trained parameters (stages, terms with own networks)."""
        return len(self.plan) > 1 or any(bool(ps) for ps in self._own.values())

    # ------------------------------------------------------------------ stages
    @property
    def stage_index(self) -> int:
        return int(self._stage_idx or 0)

    @property
    def stage(self) -> Stage:
        return self.plan[self.stage_index]

    def enter_stage(self, index: int) -> None:
        """Apply stage ``index``: active adapters, trainability, learning rates and loss terms."""
        self.generator.adapters.activate(denoiser=self.plan.active_denoiser(index))
        train_only(self, self.plan.trainable(index))  # loss-term networks train only in their aux step
        self._set_lrs(index)
        self._active_terms = self.plan.term_weights(index)
        if self._stage_idx is not None and index != self._stage_idx:
            log.info("stage %d/%d '%s' starts at step %d: training %s", index + 1, len(self.plan), self.plan[index].name,
                     self._global_step(), ", ".join(self.plan.stage_units(self.plan[index])))
        self._stage_idx = index

    def _forget_inactive_terms(self) -> None:
        """Loggers get only the terms computed in this stage.

        Lightning keeps every value logged in an epoch and hands all of them to the loggers at each
        logging step, so a term switched off at a stage boundary would repeat its last value until
        the epoch ends (IFCSR stage 2 showed a frozen ``train/mse``). Its stored results are reset
        here (a reset result is skipped until logged again).
        """
        live = {f"train/{n}" for n in self._active_terms} | {f"train/{n}_aux" for n in self._active_terms}
        live |= {"train/loss", "train/stage"}
        forget_logged(self.trainer, lambda name: not name.startswith("train/") or name in live)

    def _set_lrs(self, index: int) -> None:
        """Group learning rates of the stage; with a scheduler, its base rates (the schedule scales them)."""
        if self._trainer is None or not self.trainer.optimizers:
            return
        opt = self.trainer.optimizers[0]
        sched = self._scheduler()
        for gi, lr in enumerate(self.plan.unit_lrs(index, self.lr).values()):
            if sched is None:
                opt.param_groups[gi]["lr"] = lr
            else:
                sched.base_lrs[gi] = lr
                opt.param_groups[gi]["initial_lr"] = lr
        if sched is not None:  # the current factor applied to the new base rates
            for group, base, factor in zip(opt.param_groups, sched.base_lrs, _lambda_factors(sched)):
                group["lr"] = base * factor

    def _scheduler(self) -> torch.optim.lr_scheduler.LambdaLR | None:
        configs = self.trainer.lr_scheduler_configs if self._trainer is not None else []
        return configs[0].scheduler if configs else None

    def _global_step(self) -> int:
        return int(self.trainer.global_step) if self._trainer is not None else 0

    def _sync_stage(self) -> None:
        index = self.plan.index(self._global_step())
        if index != self._stage_idx:
            self.enter_stage(index)

    # ------------------------------------------------------------------ setup
    def configure_optimizers(self):
        groups = [{"params": self.plan.units[u], "name": u} for u in self.plan.trained_units]
        opt = self.optimizer_factory(groups, lr=self.lr)
        optimizers = [opt] + [term.configure_optimizer(self._own[n]) for n, term in self.losses.items() if self._own[n]]
        schedulers = []
        if self.scheduler_factory is not None:
            sched = self.scheduler_factory(opt)
            if not isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                raise ValueError("optim.scheduler must build a LambdaLR (e.g. diffusers.optimization."
                                 "get_cosine_schedule_with_warmup) so that stage learning rates compose with it")
            schedulers.append({"scheduler": sched, "interval": "step", "name": "lr/generator"})
        return optimizers, schedulers

    def setup(self, stage: str) -> None:
        # DDP registers only parameters that require grad when it wraps the model: make every
        # parameter trained in some stage (or by a loss term) visible to it; on_train_start then
        # applies the real stage. Stage switches and aux steps need find_unused_parameters=True.
        if stage == "fit" and self._trainer is not None and self.trainer.world_size > 1:
            every = [p for u in self.plan.trained_units for p in self.plan.units[u]]
            train_only(self, every + [p for ps in self._own.values() for p in ps])

    def on_fit_start(self) -> None:
        # Per-rank generator: ranks draw different noise, runs with the same seed draw the same.
        self._noise_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1_000_003 * self.global_rank)
        if self.generator.noise.needs_calibration:  # not on resume: on_load_checkpoint restored the values
            self._set_calibration(calibrate_noise(self))

    def _set_calibration(self, values: dict[str, Any]) -> None:
        """Settings derived from the training data: into the strategy, checkpoints and the exported config."""
        self.generator.noise.apply_calibration(values)
        self._calibration = dict(values)
        for config in (self.config, self.hparams.get("config")):
            if isinstance(config, dict) and isinstance(config.get("noise"), dict):
                config["noise"].update(values)

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
        out.sr = blend(x_fid.to(out.sr.dtype), out.sr, gamma)
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._sync_stage()
        self._forget_inactive_terms()  # here, not at the stage switch: the last step's values are logged by now
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        gen_opt, term_opts = opts[0], iter(opts[1:])
        term_opt = {n: next(term_opts) for n in self.losses if self._own[n]}
        bs = batch["lq"].shape[0]
        out = self.forward_train(batch)
        loss_batch = {**batch, "rng": self.noise_generator}
        total = torch.zeros((), device=self.device)
        values: dict[str, torch.Tensor] = {}
        for name, weight in self._active_terms.items():
            values[name] = self.losses[name](out, loss_batch)
            total = total + weight * values[name]
            self.log(f"train/{name}", values[name].detach(), batch_size=bs)
        self._loss_finite &= bool(torch.isfinite(total.detach()))
        self.manual_backward(total / self.accumulate)
        self._micro += 1
        step = self._micro >= self.accumulate
        stepped = step and self._guard("generator", gen_opt, values)
        if stepped:
            self._clip(gen_opt, self.grad_clip)
            gen_opt.step()
        if step:
            gen_opt.zero_grad(set_to_none=True)  # free them now; the aux steps add none
        # Terms with their own networks: their loss on detached outputs, gradients into them only.
        for name in [n for n in self._active_terms if self._own[n]]:
            with only_trainable(self, self._own[name]):
                aux = self.losses[name].aux_loss(out, loss_batch)
                self.manual_backward(aux / self.accumulate)
            self.log(f"train/{name}_aux", aux.detach(), batch_size=bs)
            opt = term_opt[name]
            self._aux_finite[name] = self._aux_finite.get(name, True) and bool(torch.isfinite(aux.detach()))
            if step and self._guard(name, opt, {f"{name}_aux": aux}, self._aux_finite.pop(name)):
                clip = self.losses[name].grad_clip
                self._clip(opt, self.grad_clip if clip is None else clip)
                # Through the strategy (precision plugin included) but not LightningOptimizer.step,
                # which would advance global_step once more per iteration.
                self.trainer.strategy.optimizer_step(opt.optimizer, closure=_no_closure)
            if step:
                opt.zero_grad(set_to_none=True)
        if step:
            self._micro, self._loss_finite = 0, True
            sched = self._scheduler()
            if sched is not None and stepped:  # a skipped step is not an optimizer step: the schedule waits too
                sched.step()
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
        self.log("train/stage", float(self.stage_index), batch_size=bs)
        self._sync_stage()  # global_step may have advanced: the next batch (and its lr logging) sees the next stage
        self._bad_files.update(batch.get("bad_files", []))
        return total.detach()

    def _guard(self, what: str, opt, values: dict[str, torch.Tensor], loss_finite: bool | None = None) -> bool:
        finite = self._loss_finite if loss_finite is None else loss_finite
        return self.guard.allow(opt, finite, values, what, self._global_step(),
                                self.trainer.strategy if self._trainer is not None else None)

    def _clip(self, opt, value: float | None) -> None:
        if value:
            self.clip_gradients(opt, gradient_clip_val=float(value), gradient_clip_algorithm="norm")

    def on_train_start(self) -> None:
        self.enter_stage(self.plan.index(self._global_step()))
        state = self._pending_rng
        if state is not None:
            self.noise_generator.set_state(state.to(self.noise_generator.device) if self.device.type != "cpu" else state)
            self._pending_rng = None

    def _rank_rng(self, state: dict[str, Any]) -> torch.Tensor | None:
        """This rank's own saved noise state; None (keep the per-rank seeding) when the checkpoint has none for it."""
        ranks = state.get("noise_rng_ranks")
        rank, world = self.global_rank, (self.trainer.world_size if self._trainer is not None else 1)
        if ranks is None:  # a version-1 checkpoint: one state, rank 0's
            ranks = [state["noise_rng"]] if state.get("noise_rng") is not None else []
        if len(ranks) != world and rank == 0:
            log.warning("the checkpoint holds noise generator states for %d rank(s), this run has %d: ranks without "
                        "a saved state start from their own seed", len(ranks), world)
        return ranks[rank] if rank < len(ranks) else None

    def on_train_epoch_end(self) -> None:
        counts: dict[str, int] = {}
        for part in gather_objects(self.generator.noise.pop_training_counts(), self.trainer.world_size):
            for name, c in part.items():
                counts[name] = counts.get(name, 0) + c
        for name, value in self.generator.noise.report_training_counts(counts).items():
            self.log(f"noise/{name}", value, sync_dist=True)  # from rank-summed counts: equal on every rank
        bad = set().union(*gather_objects(sorted(self._bad_files), self.trainer.world_size))
        if bad and self.global_rank == 0:
            log.warning("epoch %d: %d distinct training images were unusable and skipped so far (each named above)",
                        self.current_epoch, len(bad))
        # The same value on every rank (gathered above): sync_dist only tells Lightning it is global.
        self.log("data/unusable_files", float(len(bad)), sync_dist=True)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        g = self.generator
        if g.has_endpoints and self.stage.blend is None:  # e.g. IFCSR stage 1: the adapters this stage trains
            sr = g.step(batch["lq"], batch=batch).sr
        else:  # an endpoint model blends at model.gamma
            sr = g(batch["lq"], batch=batch)
        if self.val_metrics is not None:
            self.val_metrics.update(sr.float(), batch["hq"].float())
        if self.val_baseline is not None:  # the floor every SR model must clear
            self.val_baseline.update(g.upsample(batch["lq"].float()), batch["hq"].float())  # the model's own input
        return {"sr": sr.detach()}

    def on_validation_epoch_end(self) -> None:
        if self.val_metrics is None:
            return
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        for name, value in values.items():
            self.log(f"val/{name}", float(value), sync_dist=True)  # already synced by the suite: a mean of equals
        if self.val_baseline is not None:
            base = self.val_baseline.compute()
            self.val_baseline.reset()
            for name, value in base.items():  # val/psnr_bicubic and val/psnr_margin (model minus bicubic)
                self.log(f"val/{name}_bicubic", float(value), sync_dist=True)
                if name in values:
                    self.log(f"val/{name}_margin", float(values[name]) - float(value), sync_dist=True)

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
        # Every rank's noise state (rank 0 writes the file; every rank calls this hook, so the gather is collective).
        ranks = gather_objects(self.noise_generator.get_state().cpu(), self._trainer.world_size if self._trainer else 1)
        checkpoint["lit_sr"] = {"noise_rng_ranks": ranks, "version": 2,
                                "stage": self.stage_index, "micro_batches": self._micro,
                                "nonfinite_steps": self.guard.skipped, "unusable_files": sorted(self._bad_files),
                                "noise_calibration": self._calibration}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = self._trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}: "
                             "it was written by a different model configuration")
        state = checkpoint.get("lit_sr", {})
        self._pending_rng = self._rank_rng(state)
        self._micro = int(state.get("micro_batches", 0))
        self.guard.skipped = int(state.get("nonfinite_steps", 0))
        self._bad_files = set(state.get("unusable_files", []))
        if state.get("noise_calibration"):
            self._set_calibration(state["noise_calibration"])


def _lambda_factors(sched: torch.optim.lr_scheduler.LambdaLR) -> list[float]:
    return [float(fn(sched.last_epoch)) for fn in sched.lr_lambdas]


def _no_closure() -> None:
    return None
