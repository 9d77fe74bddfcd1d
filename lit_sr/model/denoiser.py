"""The denoiser interface: the one network a backbone family contributes (UNet or MM-DiT).

A :class:`Denoiser` wraps a diffusers network (``self.net``) and answers everything the method
parts need from it, so none of them names a UNet:

* ``forward(latent, timestep, cond, modulation)`` → the network's prediction (what it predicts is
  the backbone's :class:`~lit_sr.model.parameterisation.Parameterisation`'s business);
* the **modulation point** — the layer after which LQ feature modulation (LQFM) acts
  (``conv_in`` of a UNet, the patch embedding of a DiT), its channel count and its grid
  (``patch``: latent pixels per position, 1 for a UNet);
* the **attention capture points** — the layers whose image-query → text-key attention TMG's
  CoMat loss reads, and a processor that records it (:mod:`lit_sr.model.attention_capture`);
* **LoRA target presets** (``lora_presets``: ``all`` and ``cross_attention``), mirrored by the
  family's ``conf/lora_targets/<family>.yaml`` (a test keeps both equal);
* gradient checkpointing, the latent size multiple, and the diffusers LoRA file format its
  adapters are exported in.

A new family is one subclass in ``lit_sr/model/families/`` (with its loader), one backbone YAML
and one LoRA-target preset (``docs/extending.md``).
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

from lit_sr.model.condition import Condition


class Denoiser(nn.Module, metaclass=abc.ABCMeta):
    """A diffusion network behind the project's one calling convention (see the module docstring)."""

    family: ClassVar[str]  # the LoRA-target preset name (conf/lora_targets/<family>.yaml)
    pipeline_name: ClassVar[str]  # the diffusers pipeline its exported LoRA loads into (model cards)
    lora_presets: ClassVar[dict[str, list[str]]]  # "all" (OSEDiff-style), "cross_attention" (CODSR stage 2)

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self._maps: tuple[torch.Tensor, torch.Tensor] | None = None
        self.modulation_point().register_forward_hook(self._modulate_hook)

    # ------------------------------------------------------------------ facts
    @property
    @abc.abstractmethod
    def size_multiple(self) -> int:
        """Latent sizes the network accepts are multiples of this (down-sampling levels or patch size)."""

    @property
    @abc.abstractmethod
    def in_channels(self) -> int:
        """Latent channels the network expects."""

    @property
    @abc.abstractmethod
    def cond_width(self) -> int:
        """Width of the token states it attends to (cross-attention or joint-attention input)."""

    @property
    def pooled_width(self) -> int | None:
        """Width of the pooled conditioning vector (None: the family takes none)."""
        return None

    @property
    def max_latent_size(self) -> int | None:
        """Largest latent side one call accepts (None: any); the generator tiles larger latents."""
        return None

    @property
    def patch(self) -> int:
        """Latent pixels per position of the modulation grid (1: every latent pixel)."""
        return 1

    @property
    @abc.abstractmethod
    def modulation_channels(self) -> int:
        """Channels of the features at the modulation point."""

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    # ------------------------------------------------------------------ calls
    @abc.abstractmethod
    def modulation_point(self) -> nn.Module:
        """The layer whose output LQ modulation changes (``conv_in`` / the patch embedding)."""

    @abc.abstractmethod
    def predict(self, latent: torch.Tensor, timestep: torch.Tensor, cond: Condition) -> torch.Tensor:
        """One network evaluation (no modulation bookkeeping)."""

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, cond: Condition,
                modulation: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The prediction for ``latent`` at ``timestep`` (what :meth:`Parameterisation.model_timestep`
        gives); ``modulation`` = (γ, β) on the modulation grid, applied as ``h·(1+γ) + β``."""
        self._maps = modulation
        try:
            return self.predict(latent, timestep, cond)
        finally:
            self._maps = None

    def _modulate_hook(self, module: nn.Module, args: Any, h: torch.Tensor) -> torch.Tensor | None:
        if self._maps is None:
            return None
        gamma, beta = self._maps
        return self.modulate(h, gamma.to(h.dtype), beta.to(h.dtype))

    def modulate(self, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """``h·(1+γ) + β`` for (B, C, h, w) maps; families with another feature layout convert."""
        return h * (1 + gamma) + beta

    # ------------------------------------------------------------------ attention capture (TMG)
    @abc.abstractmethod
    def capture_points(self) -> dict[str, nn.Module]:
        """Attention modules whose image-query → text-key probabilities CoMat may read, by name."""

    @abc.abstractmethod
    def capture_processor(self, store, name: str, original) -> Any:
        """An attention processor for ``name`` that records those probabilities into ``store``."""

    # ------------------------------------------------------------------ training and export
    def enable_gradient_checkpointing(self) -> None:
        self.net.enable_gradient_checkpointing()

    @abc.abstractmethod
    def save_lora(self, folder, state: dict[str, torch.Tensor], weight_name: str, metadata: dict) -> None:
        """Write one adapter's weights (peft keys without the adapter name) in diffusers' LoRA format."""
