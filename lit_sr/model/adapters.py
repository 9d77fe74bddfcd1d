"""Named LoRA adapters through peft on the UNet and the VAE encoder.

Several adapters live on one module (``"main"``, or ``"fidelity"``/``"realism"``, or a VSD
``"vsd_fake"``) so that every use shares one copy of the frozen base weights. Trainability is
managed here explicitly: peft's ``set_adapter`` also flips ``requires_grad``, which a step that
switches adapters must not inherit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

# OSEDiff's LoRA targets (from its training script): every attention projection, conv and
# feed-forward layer of the UNet, and the convolutions/attention of the VAE encoder.
OSEDIFF_UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut", "conv_out",
                        "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj"]
OSEDIFF_VAE_TARGETS = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0"]


@dataclass
class LoRASpec:
    """One named adapter: rank, scale and which layers (leaf names, optionally under a scope)."""

    rank: int = 4
    alpha: float | None = None  # None → alpha = rank (scale 1)
    target_modules: list[str] = field(default_factory=lambda: list(OSEDIFF_UNET_TARGETS))
    scope: str | None = None  # e.g. "encoder" for the VAE encoder only
    init: str = "gaussian"  # peft init_lora_weights; "gaussian" keeps B = 0 (identity at start)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.target_modules:
            raise ValueError("LoRA target_modules is empty")
        self.target_modules = list(self.target_modules)

    def target_regex(self) -> str:
        """A full-match regex over module names (peft matches a string target this way)."""
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


def add_adapter(module: nn.Module, name: str, spec: LoRASpec) -> None:
    """Add adapter ``name`` to a diffusers model (UNet/VAE); fails if no layer matched."""
    if name in adapter_names(module):
        raise ValueError(f"adapter {name!r} already exists")
    before = sum(1 for _ in module.parameters())
    module.add_adapter(spec.peft_config(), adapter_name=name)
    if sum(1 for _ in module.parameters()) == before:
        raise ValueError(f"adapter {name!r}: target_modules {spec.target_modules} matched no layer")


def adapter_names(module: nn.Module) -> list[str]:
    cfg = getattr(module, "peft_config", None)
    return list(cfg) if cfg else []


def adapter_parameters(module: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """Parameters belonging to adapter ``name`` (peft names them ``...lora_A.<name>.weight``)."""
    marker = f".{name}."
    return {n: p for n, p in module.named_parameters() if ("lora_" in n and marker in n)}


def activate(module: nn.Module, names: list[str] | str | None) -> None:
    """Make exactly ``names`` active (None: disable all adapters) without touching requires_grad."""
    if not adapter_names(module):
        return
    # peft's enable/disable/set_adapter all rewrite requires_grad; trainability is ours to keep.
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    if names is None or names == []:
        module.disable_adapters()
    else:
        names = [names] if isinstance(names, str) else list(names)
        module.enable_adapters()
        module.set_adapter(names if len(names) > 1 else names[0])
    for n, p in module.named_parameters():
        p.requires_grad_(flags[n])


def set_trainable(module: nn.Module, names: list[str]) -> None:
    """Only the parameters of adapters ``names`` require grad; base weights and others are frozen."""
    wanted = set(names)
    unknown = wanted - set(adapter_names(module))
    if unknown:
        raise ValueError(f"unknown adapter(s) {sorted(unknown)}; have {adapter_names(module)}")
    for n, p in module.named_parameters():
        p.requires_grad_("lora_" in n and any(f".{a}." in n for a in wanted))
