"""Training stages: which adapters/modules train, which are active, which losses apply, for how long.

A run is a list of stages (top-level ``stages:`` in the config); without one, a single implicit
stage trains every adapter and module with every loss term. Each stage names

* ``name``, ``steps`` — its length in training iterations (0 skips it; the last stage may leave it
  null, and in any case lasts until ``trainer.max_steps``);
* ``train_adapters`` / ``train_vae_adapters`` / ``train_modules`` — UNet adapters, VAE-encoder
  adapters and generator sub-modules (``modulation``, ``conditioner``) trained in this stage;
* ``freeze`` — adapters kept active but not trained (a stage-1 LoRA under a stage-2 LoRA);
* ``active_adapters`` — the UNet adapters active in the forward (default: train ∪ freeze);
* ``add_adapters`` — new LoRA adapters (name → LoRA spec) first trained in this stage. They are
  created when the generator is built, not at stage start, so checkpoints have stable keys;
* ``losses`` — ``{term: weight}`` (null weight: the term's configured one; 0: off in this stage,
  its own network not updated either; omitted: all terms);
* ``lr`` — learning rate of this stage (default: ``optim.lr``);
* ``blend`` — ``{gamma: uniform}`` (IFCSR stage 2): the output losses see is
  ``(1−γ)·x_fid + γ·x_real`` with the fidelity endpoint computed under no_grad.

``merge`` is rejected: merging an adapter into the shared base would also change the frozen
"real" score network that VSD reads from the same base weights, and peft un-merges (rounding the
base) whenever adapters are switched; ``freeze`` computes the same function without touching it.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from lit_sr.errors import ConfigError

STAGE_KEYS = ("name", "steps", "train_adapters", "train_vae_adapters", "train_modules", "active_adapters",
              "freeze", "merge", "add_adapters", "losses", "lr", "blend")
BLEND_KEYS = ("gamma", "fidelity")
MODULE_KEYS = {"modulation": "modulation", "conditioner": "conditioning"}  # generator attribute → config node


@dataclass
class Blend:
    """IFCSR γ-blend of the trained (realism) pass with a frozen endpoint's image."""

    gamma: str | float = "uniform"  # "uniform": γ ~ U(0, 1) per sample; a number: fixed γ
    fidelity: str = "fidelity"  # the model.endpoints entry computed under no_grad


@dataclass
class Stage:
    """One training stage; ``None`` in a list field means "everything" (the implicit stage)."""

    name: str
    steps: int | None = None
    train_adapters: list[str] | None = None
    train_vae_adapters: list[str] | None = None
    train_modules: list[str] | None = None
    active_adapters: list[str] | None = None
    freeze: list[str] = field(default_factory=list)
    add_adapters: dict[str, dict] = field(default_factory=dict)
    losses: dict[str, float | None] | None = None
    lr: float | None = None
    blend: Blend | None = None

    @property
    def implicit(self) -> bool:
        return self.train_adapters is None

    def active_unet(self, all_adapters: list[str]) -> list[str] | None:
        """Active UNet adapters in generator order (None: keep the generator's own choice)."""
        if self.implicit and self.active_adapters is None:
            return None
        wanted = set(self.active_adapters if self.active_adapters is not None
                     else [*(self.train_adapters or []), *self.freeze])
        return [a for a in all_adapters if a in wanted]


def implicit_stage() -> Stage:
    """The single stage of a run without ``stages:``: train everything with every loss."""
    return Stage(name="train")


def _as_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"bad value for '{key}': {value!r} (expected a list of names)")
    return [str(v) for v in value]


def parse_stages(node: Any) -> list[Stage]:
    """Typed stages from the ``stages`` config node (a list of mappings); [] when absent."""
    if node is None:
        return []
    if hasattr(node, "_content") or hasattr(node, "_metadata"):  # OmegaConf node → plain containers
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, (list, tuple)):
        raise ConfigError(f"bad value for 'stages': expected a list of stages, got {type(node).__name__}")
    stages: list[Stage] = []
    for i, raw in enumerate(node):
        key = f"stages[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"bad value for '{key}': expected a mapping with name, steps, train_adapters, ...")
        unknown = sorted(set(raw) - set(STAGE_KEYS))
        if unknown:
            raise ConfigError(f"unknown config key '{key}.{unknown[0]}' (accepted: {', '.join(STAGE_KEYS)})")
        if _as_list(raw.get("merge"), f"{key}.merge"):
            raise ConfigError(f"{key}.merge is not supported: merging into the shared base would also change VSD's "
                              "real score network; use freeze (same function, base untouched)")
        steps = raw.get("steps")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise ConfigError(f"bad value for '{key}.steps': {steps!r} (a number of iterations >= 0; 0 skips the stage)")
        if steps is None and i != len(node) - 1:
            raise ConfigError(f"'{key}.steps' is missing: only the last stage may run until trainer.max_steps")
        losses = raw.get("losses")
        if losses is not None:
            if not isinstance(losses, dict) or not losses:
                raise ConfigError(f"bad value for '{key}.losses': expected {{term: weight}} with at least one term")
            for term, w in losses.items():
                if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float))):
                    raise ConfigError(f"bad value for '{key}.losses.{term}': {w!r} is not a number")
            losses = {str(k): (None if v is None else float(v)) for k, v in losses.items()}
            if all(v == 0.0 for v in losses.values()):
                raise ConfigError(f"'{key}.losses': every weight is 0, nothing would train")
        lr = raw.get("lr")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
            raise ConfigError(f"bad value for '{key}.lr': {lr!r} (must be > 0)")
        add = raw.get("add_adapters") or {}
        if not isinstance(add, dict):
            raise ConfigError(f"bad value for '{key}.add_adapters': expected {{name: LoRA spec}}")
        stage = Stage(
            name=str(raw.get("name") or f"stage{i}"),
            steps=steps,
            train_adapters=_as_list(raw.get("train_adapters"), f"{key}.train_adapters"),
            train_vae_adapters=_as_list(raw.get("train_vae_adapters"), f"{key}.train_vae_adapters"),
            train_modules=_as_list(raw.get("train_modules"), f"{key}.train_modules"),
            active_adapters=(None if raw.get("active_adapters") is None
                             else _as_list(raw.get("active_adapters"), f"{key}.active_adapters")),
            freeze=_as_list(raw.get("freeze"), f"{key}.freeze"),
            add_adapters={str(k): dict(v or {}) for k, v in add.items()},
            losses=losses,
            lr=None if lr is None else float(lr),
            blend=_parse_blend(raw.get("blend"), f"{key}.blend"),
        )
        both = set(stage.train_adapters or []) & set(stage.freeze)
        if both:
            raise ConfigError(f"'{key}': adapter {sorted(both)[0]!r} is both trained and frozen")
        if stage.active_adapters is not None:
            idle = set(stage.train_adapters or []) - set(stage.active_adapters)
            if idle:
                raise ConfigError(f"'{key}': adapter {sorted(idle)[0]!r} is trained but not in active_adapters")
        if not (stage.train_adapters or stage.train_vae_adapters or stage.train_modules):
            raise ConfigError(f"'{key}' trains nothing: name train_adapters, train_vae_adapters or train_modules")
        stages.append(stage)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stage names must be unique, got {names}")
    return stages


def _parse_blend(value: Any, key: str) -> Blend | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"bad value for '{key}': expected {{gamma: uniform}}")
    unknown = sorted(set(value) - set(BLEND_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key '{key}.{unknown[0]}' (accepted: {', '.join(BLEND_KEYS)})")
    gamma = value.get("gamma", "uniform")
    if gamma != "uniform" and (isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma <= 1):
        raise ConfigError(f"bad value for '{key}.gamma': {gamma!r} (use 'uniform' or a number in [0, 1])")
    return Blend(gamma=gamma if gamma == "uniform" else float(gamma), fidelity=str(value.get("fidelity", "fidelity")))


def added_adapters(stages: list[Stage]) -> dict[str, dict]:
    """Every adapter a stage adds (name → LoRA spec); the builder creates them up front."""
    out: dict[str, dict] = {}
    for stage in stages:
        for name, spec in stage.add_adapters.items():
            if name in out:
                raise ConfigError(f"adapter {name!r} is added by more than one stage")
            out[name] = spec
    return out


def check_stages(cfg) -> None:
    """Config-time check of the ``stages`` node against the lora, loss and model nodes."""
    stages = parse_stages(cfg.get("stages"))
    if not stages:
        return
    from omegaconf import OmegaConf

    from lit_sr.model.adapters import LoRASpec
    from lit_sr.config.compose import check_kwargs

    lora = OmegaConf.to_container(cfg.lora, resolve=True) if cfg.get("lora") is not None else {}
    unet = set((lora.get("unet") or {}))
    vae = set((lora.get("vae") or {}))
    added = added_adapters(stages)
    for name, spec in added.items():
        if name in unet:
            raise ConfigError(f"adapter {name!r} is both in lora.unet and a stage's add_adapters")
        check_kwargs(LoRASpec, spec, f"add_adapters.{name}")
    unet |= set(added)
    terms = set((cfg.loss.get("terms") or {}) if cfg.get("loss") is not None else {})
    endpoints = (cfg.get("model") or {}).get("endpoints") or {}
    for i, stage in enumerate(stages):
        key = f"stages[{i}]"
        for field_name in ("train_adapters", "freeze", "active_adapters"):
            for a in getattr(stage, field_name) or []:
                if a not in unet:
                    raise ConfigError(f"'{key}.{field_name}': unknown UNet adapter {a!r}; have {sorted(unet)}")
        for a in stage.train_vae_adapters or []:
            if a not in vae:
                raise ConfigError(f"'{key}.train_vae_adapters': unknown VAE adapter {a!r}; have {sorted(vae)}")
        for m in stage.train_modules or []:
            if m not in MODULE_KEYS or cfg.get(MODULE_KEYS[m]) is None:
                raise ConfigError(f"'{key}.train_modules': {m!r} is not a configured generator module "
                                  "(modulation, conditioner)")
        for t in stage.losses or {}:
            if t not in terms:
                raise ConfigError(f"'{key}.losses': unknown loss term {t!r}; have {sorted(terms)}")
        if stage.blend is not None and stage.blend.fidelity not in endpoints:
            raise ConfigError(f"'{key}.blend' needs model.endpoints with a {stage.blend.fidelity!r} entry")


class StageSchedule:
    """Maps a training iteration to its stage (the last stage continues past its length)."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = list(stages) or [implicit_stage()]
        self.starts: list[int] = []
        start = 0
        for stage in self.stages:
            self.starts.append(start)
            start += stage.steps or 0

    def __len__(self) -> int:
        return len(self.stages)

    def index(self, step: int) -> int:
        """Index of the stage that iteration ``step`` (0-based) belongs to."""
        return max(bisect.bisect_right(self.starts, int(step)) - 1, 0)

    def __getitem__(self, i: int) -> Stage:
        return self.stages[i]
