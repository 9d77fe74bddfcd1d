"""Named LoRA adapters and trainability: the one module that talks to peft.

Several adapters live on one denoiser (``"main"``, or ``"fidelity"``/``"realism"``, a stage-2
``"alignment"``, VSD's ``"vsd_fake"``) and on the VAE encoder, so that every use shares one copy
of the frozen base weights. :class:`AdapterSet` owns them: it adds adapters, switches the active
set and reports each adapter's parameters. Which parameters train is set with :func:`train_only`
/ :func:`only_trainable`.

Why switching does not go through peft's ``set_adapter``/``disable_adapters``: both walk every
module and rewrite ``requires_grad`` (disabling freezes every LoRA weight; activating makes the
active adapter trainable), which would silently change what trains whenever a pass switches
adapters, e.g. VSD's real/fake score passes or the base-encoder HQ latent. A tuner layer's
forward reads only its active-adapter list and its disabled flag, so :meth:`AdapterSet.activate`
sets exactly those two on every layer, never touches ``requires_grad``, and costs no module walk.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from lit_sr.model.peft_access import set_active

# OSEDiff's LoRA targets of the VAE encoder (its convolutions and attention; the same AutoencoderKL
# layout in every family). The denoiser's presets belong to its family (Denoiser.lora_presets); the
# YAML configs name the same lists in conf/lora_targets/<family>.yaml (a test keeps them equal).
OSEDIFF_VAE_TARGETS = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0"]
PARTS = ("denoiser", "vae")


@dataclass
class LoRASpec:
    """One named adapter: rank, scale and which layers (leaf names, optionally under a scope)."""

    rank: int = 4
    alpha: float | None = None  # None → alpha = rank (scale 1)
    target_modules: list[str] | None = None  # None: the part's preset (the family's "all" list; the VAE's)
    scope: str | None = None  # e.g. "encoder" for the VAE encoder only
    init: str = "gaussian"  # peft init_lora_weights; "gaussian" keeps B = 0 (identity at start)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("LoRA target_modules is empty")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None:
            self.target_modules = list(self.target_modules)

    def with_targets(self, preset: list[str]) -> LoRASpec:
        """This spec, with ``preset`` as its layers when it names none."""
        return self if self.target_modules is not None else replace(self, target_modules=list(preset))

    def target_regex(self) -> str:
        """A full-match regex over module names (peft matches a string target this way)."""
        if self.target_modules is None:
            raise ValueError("LoRA target_modules not resolved (LoRASpec.with_targets)")
        leaves = "|".join(re.escape(t) for t in self.target_modules)
        prefix = rf"{re.escape(self.scope)}\.(?:.*\.)?" if self.scope else r"(?:.*\.)?"
        return rf"^{prefix}(?:{leaves})$"

    def peft_config(self):
        from peft import LoraConfig

        init = True if self.init in ("default", "true", True) else self.init
        return LoraConfig(r=self.rank, lora_alpha=self.alpha if self.alpha is not None else self.rank,
                          target_modules=self.target_regex(), init_lora_weights=init, lora_dropout=self.dropout)


def as_spec(value) -> LoRASpec:
    if isinstance(value, LoRASpec):
        return value
    return LoRASpec(**dict(value))


class AdapterSet:
    """The named LoRA adapters of a denoiser and a VAE, and which of them are active.

    ``presets`` gives each part's default layer list for specs that name none.
    """

    def __init__(self, denoiser: nn.Module, vae: nn.Module, presets: dict[str, list[str]] | None = None) -> None:
        self.modules: dict[str, nn.Module] = {"denoiser": denoiser, "vae": vae}
        self.presets: dict[str, list[str]] = {"vae": list(OSEDIFF_VAE_TARGETS), **(presets or {})}
        self.active: dict[str, list[str]] = {"denoiser": [], "vae": []}
        self.fused: dict[str, list[str]] = {"denoiser": [], "vae": []}
        self._layers: dict[str, list[nn.Module]] = {}

    # ------------------------------------------------------------------ inventory
    def names(self, part: str) -> list[str]:
        """Adapters of ``part`` (``denoiser`` or ``vae``) in creation order."""
        cfg = getattr(self.modules[part], "peft_config", None)
        return list(cfg) if cfg else []

    def parameters(self, part: str, name: str) -> dict[str, nn.Parameter]:
        """Parameters of adapter ``name`` (peft names them ``...lora_A.<name>.weight``)."""
        marker = f".{name}."
        return {n: p for n, p in self.modules[part].named_parameters() if "lora_" in n and marker in n}

    def add(self, part: str, name: str, spec: LoRASpec) -> None:
        """Add adapter ``name``, inactive and frozen; the active set and every other flag stay as they were."""
        module = self.modules[part]
        if name in self.names(part):
            raise ValueError(f"adapter {name!r} already exists on the {part}")
        if spec.target_modules is None:
            if part not in self.presets:
                raise ValueError(f"adapter {name!r}: target_modules not given and the {part} has no preset")
            spec = spec.with_targets(self.presets[part])
        flags = {n: p.requires_grad for n, p in module.named_parameters()}
        before = len(flags)
        with warnings.catch_warnings():  # several named adapters on one model is the design, not a mistake
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            module.add_adapter(spec.peft_config(), adapter_name=name)  # diffusers activates it and flips flags
        for n, p in module.named_parameters():
            p.requires_grad_(flags.get(n, False))
        if sum(1 for _ in module.parameters()) == before:
            raise ValueError(f"adapter {name!r}: target_modules {spec.target_modules} matched no layer of the {part}")
        # Trained weights stay fp32 whatever the frozen base is: bf16 cannot hold LoRA's small
        # updates (at lr 5e-5 most elements would never change). peft casts the input to the
        # adapter's dtype and the result back, so a bf16 base and fp32 adapters mix.
        for p in self.parameters(part, name).values():
            if p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
        self._layers.pop(part, None)
        self._apply(part)

    def set_weights(self, part: str, weights: dict[str, float]) -> None:
        """Scale adapters' contributions (diffusers ``set_adapters`` weights; 1.0 = as trained)."""
        unknown = set(weights) - set(self.names(part))
        if unknown:
            raise ValueError(f"unknown {part} adapter(s) {sorted(unknown)}; have {self.names(part)}")
        for layer in self._tuner_layers(part):
            for name, weight in weights.items():
                if name in getattr(layer, "scaling", {}):
                    layer.set_scale(name, float(weight))

    def fuse(self, part: str) -> None:
        """Merge the active adapters of ``part`` into its base weights (inference: no LoRA matmuls).

        A fused set cannot be switched any more (the base weights now hold it); endpoint models,
        whose passes switch adapters, stay unfused.
        """
        names = list(self.active[part])
        for layer in self._tuner_layers(part):
            present = [n for n in names if n in getattr(layer, "lora_A", {})]
            if present:
                layer.merge(adapter_names=present)
        self.fused[part] = names

    def unfuse(self, part: str) -> None:
        """Undo :meth:`fuse`: the base weights of ``part`` are the pretrained ones again, adapters switchable."""
        for layer in self._tuner_layers(part):
            if getattr(layer, "merged", False):
                layer.unmerge()
        self.fused[part] = []

    # ------------------------------------------------------------------ switching
    def activate(self, denoiser: Sequence[str] | None = None, vae: Sequence[str] | None = None) -> None:
        """Make exactly these adapters active (``[]``: base weights only; ``None``: leave that part)."""
        for part, names in (("denoiser", denoiser), ("vae", vae)):
            if names is None:
                continue
            names = list(names)
            if self.fused[part] and names != self.fused[part]:
                raise ValueError(f"the {part} adapters {self.fused[part]} are fused into the base weights and "
                                 "cannot be switched (run without --fuse)")
            unknown = set(names) - set(self.names(part))
            if unknown:
                raise ValueError(f"unknown {part} adapter(s) {sorted(unknown)}; have {self.names(part)}")
            self.active[part] = names
            self._apply(part)

    @contextmanager
    def using(self, denoiser: Sequence[str] | None = None, vae: Sequence[str] | None = None) -> Iterator[None]:
        """Switch adapters for a block (e.g. VSD's real/fake score passes), then restore the previous set."""
        saved = {part: list(names) for part, names in self.active.items()}
        self.activate(denoiser, vae)
        try:
            yield
        finally:
            self.activate(saved["denoiser"], saved["vae"])

    def _tuner_layers(self, part: str) -> list[nn.Module]:
        layers = self._layers.get(part)
        if layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            layers = [m for m in self.modules[part].modules() if isinstance(m, BaseTunerLayer)]
            self._layers[part] = layers
        return layers

    def _apply(self, part: str) -> None:
        names = self.active[part]
        for layer in self._tuner_layers(part):  # see the module docstring for why not set_adapter
            set_active(layer, names)


def train_only(module: nn.Module, params: Iterable[nn.Parameter]) -> None:
    """Exactly ``params`` of ``module`` require grad; everything else is frozen."""
    wanted = {id(p) for p in params}
    for p in module.parameters():
        p.requires_grad_(id(p) in wanted)


@contextmanager
def only_trainable(module: nn.Module, params: Iterable[nn.Parameter]) -> Iterator[None]:
    """:func:`train_only` for a block (e.g. a loss term's own optimizer step); every flag is restored."""
    everything = list(module.parameters())
    flags = [p.requires_grad for p in everything]
    train_only(module, params)
    try:
        yield
    finally:
        for p, flag in zip(everything, flags):
            p.requires_grad_(flag)
