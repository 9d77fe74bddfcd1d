"""Training stages: which adapters/modules train, which are active, which losses apply, for how long.

A run is a list of stages (top-level ``stages:`` in the config); without one, a single implicit
stage trains every adapter and module with every loss term. Each stage names

* ``name``, ``steps`` — its length in optimizer steps (0 skips it; the last stage may leave it
  null, and in any case lasts until ``trainer.max_steps``);
* ``train_adapters`` / ``train_vae_adapters`` / ``train_modules`` — denoiser adapters, VAE-encoder
  adapters and generator sub-modules (``modulation``, ``conditioner``) trained in this stage;
* ``freeze`` — adapters kept active but not trained (a stage-1 LoRA under a stage-2 LoRA);
* ``active_adapters`` — the denoiser adapters active in the forward (default: train ∪ freeze);
* ``add_adapters`` — new LoRA adapters (name → LoRA spec) first trained in this stage. They are
  created when the generator is built, not at stage start, so checkpoints have stable keys;
* ``losses`` — ``{term: weight}`` (null weight: the term's configured one; 0: off in this stage,
  its own network not updated either; omitted: all terms);
* ``lr`` — learning rate of this stage (default: ``optim.lr``);
* ``blend`` — ``{gamma: uniform}`` (IFCSR stage 2): the output losses see is
  ``(1−γ)·x_fid + γ·x_real`` with the fidelity endpoint computed under no_grad.

:class:`Stage` is the typed config node (OmegaConf checks keys and types, ``__post_init__`` the
values); :class:`StagePlan` turns a list of stages into what the system applies: the trainable
units of each stage, the active adapters, the loss weights, and one optimizer layout for all.

``merge`` is rejected: merging an adapter into the shared base would also change the frozen
"real" score network that VSD reads from the same base weights, and peft un-merges (rounding the
base) whenever adapters are switched; ``freeze`` computes the same function without touching it.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf
from torch import nn

from lit_sr.errors import ConfigError, FieldError
from lit_sr.model.adapters import LoRASpec
from lit_sr.typed import typed

MODULE_KEYS = {"modulation": "modulation", "conditioner": "conditioning"}  # generator attribute → config node


@dataclass
class Blend:
    """IFCSR γ-blend of the trained (realism) pass with a frozen endpoint's image."""

    gamma: Any = "uniform"  # "uniform": γ ~ U(0, 1) per sample; a number in [0, 1]: fixed γ
    fidelity: str = "fidelity"  # the model.endpoints entry computed under no_grad

    def __post_init__(self) -> None:
        g = self.gamma
        if g != "uniform" and (isinstance(g, bool) or not isinstance(g, (int, float)) or not 0 <= g <= 1):
            raise FieldError("gamma", f"must be 'uniform' or a number in [0, 1], got {g!r}")
        if g != "uniform":
            self.gamma = float(g)


@dataclass
class Stage:
    """One training stage; ``None`` in a list field means "everything" (the implicit stage)."""

    name: str = MISSING
    steps: Optional[int] = None
    train_adapters: Optional[list[str]] = None
    train_vae_adapters: Optional[list[str]] = None
    train_modules: Optional[list[str]] = None
    active_adapters: Optional[list[str]] = None
    freeze: list[str] = field(default_factory=list)
    merge: list[str] = field(default_factory=list)
    add_adapters: dict[str, LoRASpec] = field(default_factory=dict)
    losses: Optional[dict[str, Optional[float]]] = None
    lr: Optional[float] = None
    blend: Optional[Blend] = None

    def __post_init__(self) -> None:
        if self.merge:
            raise FieldError("merge", "is not supported: merging into the shared base would also change VSD's real "
                                      "score network; use freeze (same function, base untouched)")
        if self.steps is not None and self.steps < 0:
            raise FieldError("steps", f"must be a number of optimizer steps >= 0 (0 skips the stage), got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise FieldError("lr", f"must be > 0, got {self.lr}")
        if self.losses is not None:
            if not self.losses:
                raise FieldError("losses", "must map at least one term to a weight")
            if all(w == 0.0 for w in self.losses.values()):
                raise FieldError("losses", "is invalid: every weight is 0, nothing would train")
        both = set(self.train_adapters or []) & set(self.freeze)
        if both:
            raise FieldError("freeze", f"is invalid: {sorted(both)[0]!r} is both trained and frozen")
        if self.active_adapters is not None:
            idle = set(self.train_adapters or []) - set(self.active_adapters)
            if idle:
                raise FieldError("active_adapters", f"lacks {sorted(idle)[0]!r}, which is trained (a trained adapter must be active)")

    @property
    def implicit(self) -> bool:
        return self.train_adapters is None and self.train_vae_adapters is None and self.train_modules is None

    def active_denoiser(self, all_adapters: list[str]) -> list[str] | None:
        """Active denoiser adapters in generator order (None: keep the generator's own choice)."""
        if self.implicit and self.active_adapters is None:
            return None
        wanted = set(self.active_adapters if self.active_adapters is not None
                     else [*(self.train_adapters or []), *self.freeze])
        return [a for a in all_adapters if a in wanted]


def parse_stages(node: Any) -> list[Stage]:
    """Typed stages from a ``stages`` node (list of mappings, DictConfig or Stage objects); [] when absent.

    OmegaConf checks keys and types against :class:`Stage`; every problem is a one-line
    :class:`ConfigError` naming ``stages[i].key``.
    """
    if node is None:
        return []
    items = list(node) if OmegaConf.is_list(node) or isinstance(node, (list, tuple)) else None
    if items is None:
        raise ConfigError(f"bad value for 'stages': expected a list of stages, got {type(node).__name__}")
    stages = []
    for i, raw in enumerate(items):
        key = f"stages[{i}]"
        if isinstance(raw, Stage):
            stages.append(raw)
            continue
        stage = typed(Stage, raw, key)
        if not (stage.train_adapters or stage.train_vae_adapters or stage.train_modules):
            raise ConfigError(f"'{key}' trains nothing: name train_adapters, train_vae_adapters or train_modules")
        stages.append(stage)
    check_sequence(stages)
    return stages


def check_sequence(stages: list[Stage]) -> None:
    """Checks across stages: only the last may run open-ended, names are unique, adapters added once."""
    for i, stage in enumerate(stages[:-1]):
        if stage.steps is None:
            raise ConfigError(f"'stages[{i}].steps' is missing: only the last stage may run until trainer.max_steps")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stage names must be unique, got {names}")
    added_adapters(stages)


def added_adapters(stages: list[Stage]) -> dict[str, LoRASpec]:
    """Every adapter a stage adds (name → LoRA spec); the builder creates them up front."""
    out: dict[str, LoRASpec] = {}
    for stage in stages:
        for name, spec in stage.add_adapters.items():
            if name in out:
                raise ConfigError(f"adapter {name!r} is added by more than one stage")
            out[name] = spec
    return out


def check_against(stages: list[Stage], denoiser: set[str], vae: set[str], terms: set[str], modules: set[str],
                  endpoints: set[str]) -> None:
    """Each stage's names exist: adapters (configured + added), loss terms, modules, endpoints."""
    added = added_adapters(stages)
    clash = sorted(set(added) & denoiser)
    if clash:
        raise ConfigError(f"adapter {clash[0]!r} is both in lora.denoiser and a stage's add_adapters")
    denoiser = denoiser | set(added)
    for i, stage in enumerate(stages):
        key = f"stages[{i}]"
        for field_name in ("train_adapters", "freeze", "active_adapters"):
            for a in getattr(stage, field_name) or []:
                if a not in denoiser:
                    raise ConfigError(f"'{key}.{field_name}': unknown denoiser adapter {a!r}; have {sorted(denoiser)}")
        for a in stage.train_vae_adapters or []:
            if a not in vae:
                raise ConfigError(f"'{key}.train_vae_adapters': unknown VAE adapter {a!r}; have {sorted(vae)}")
        for m in stage.train_modules or []:
            if m not in modules:
                raise ConfigError(f"'{key}.train_modules': {m!r} is not a configured generator module "
                                  f"({', '.join(sorted(MODULE_KEYS))}; configured: {sorted(modules) or 'none'})")
        for t in stage.losses or {}:
            if t not in terms:
                raise ConfigError(f"'{key}.losses': unknown loss term {t!r}; have {sorted(terms)}")
        if stage.blend is not None and stage.blend.fidelity not in endpoints:
            raise ConfigError(f"'{key}.blend' needs model.endpoints with a {stage.blend.fidelity!r} entry")


class StageSchedule:
    """Maps an optimizer step to its stage (the last stage continues past its length)."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = list(stages) or [Stage(name="train")]
        self.starts: list[int] = []
        start = 0
        for stage in self.stages:
            self.starts.append(start)
            start += stage.steps or 0

    def __len__(self) -> int:
        return len(self.stages)

    def index(self, step: int) -> int:
        """Index of the stage that optimizer step ``step`` (0-based) belongs to."""
        return max(bisect.bisect_right(self.starts, int(step)) - 1, 0)

    def __getitem__(self, i: int) -> Stage:
        return self.stages[i]


class StagePlan(StageSchedule):
    """What each stage trains, activates and weighs, for one generator and its loss terms.

    Trainable *units* are ``denoiser:<adapter>``, ``vae:<adapter>`` and ``module:<child>`` (a
    generator sub-module's own trainable parameters). :attr:`trained_units` — every unit trained in
    some stage, in a fixed order — is the generator optimizer's layout (one parameter group per
    unit), the same in every stage, so checkpoints of any stage load into any other.
    """

    def __init__(self, stages: list[Stage], generator: nn.Module, terms: dict[str, Any],
                 exclude: set[int] | None = None) -> None:
        super().__init__(stages)
        self.generator, self.terms = generator, terms
        self.units = self._collect_units(exclude or set())
        for i, stage in enumerate(self.stages):
            self._check(i, stage)
        trained: list[str] = []
        for stage in self.stages:
            trained += [u for u in self.stage_units(stage) if u not in trained and self.units[u]]
        self.trained_units = trained

    def _collect_units(self, exclude: set[int]) -> dict[str, list[nn.Parameter]]:
        g = self.generator
        units: dict[str, list[nn.Parameter]] = {}
        for part, names in (("denoiser", g.denoiser_adapters), ("vae", g.vae_adapters)):
            for name in names:
                units[f"{part}:{name}"] = list(g.adapters.parameters(part, name).values())
        for child in MODULE_KEYS:
            module = getattr(g, child, None)
            if module is None:
                continue
            # The parameters the component itself leaves trainable (not, e.g., a frozen CLIP encoder).
            params = [p for p in module.parameters() if p.requires_grad and id(p) not in exclude]
            if params:
                units[f"module:{child}"] = params
        return units

    def stage_units(self, stage: Stage) -> list[str]:
        if stage.implicit:
            return list(self.units)
        names = [f"denoiser:{a}" for a in stage.train_adapters or []]
        names += [f"vae:{a}" for a in stage.train_vae_adapters or []]
        names += [f"module:{m}" for m in stage.train_modules or []]
        return names

    def _check(self, i: int, stage: Stage) -> None:
        for m in stage.train_modules or []:
            if f"module:{m}" not in self.units:
                raise ValueError(f"stages[{i}]: module {m!r} has no trainable parameters (accepted: "
                                 f"{', '.join(sorted(MODULE_KEYS))} when configured)")
        if not self.stage_units(stage):
            raise ValueError(f"stages[{i}] trains nothing")

    def trainable(self, index: int) -> list[nn.Parameter]:
        """The generator parameters stage ``index`` trains."""
        return [p for unit in self.stage_units(self[index]) for p in self.units[unit]]

    def active_denoiser(self, index: int) -> list[str]:
        """The denoiser adapters active in stage ``index`` (the generator's own adapters for the implicit stage)."""
        active = self[index].active_denoiser(self.generator.denoiser_adapters)
        return list(self.generator.denoiser_adapters) if active is None else active

    def term_weights(self, index: int) -> dict[str, float]:
        """Loss-term weights of stage ``index``; a weight of 0 switches the term off."""
        losses = self[index].losses
        weights = {n: float(t.weight if losses is None or losses.get(n) is None else losses[n])
                   for n, t in self.terms.items() if losses is None or n in losses}
        return {n: w for n, w in weights.items() if w != 0.0}

    def unit_lrs(self, index: int, base_lr: float) -> dict[str, float]:
        """Learning rate of every unit in :attr:`trained_units` during stage ``index`` (0: frozen)."""
        train = set(self.stage_units(self[index]))
        lr = self[index].lr or base_lr
        return {unit: (lr if unit in train else 0.0) for unit in self.trained_units}
