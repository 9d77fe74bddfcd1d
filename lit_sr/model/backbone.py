"""The pretrained parts a one-step super-resolver is fine-tuned from, whatever the family.

A :class:`Backbone` is four parts behind small interfaces, and nothing else in the project looks
inside them:

* a :class:`~lit_sr.model.denoiser.Denoiser` — the UNet (SD-2.1, SD-Turbo) or MM-DiT (SD3, SD3.5);
* an :class:`~lit_sr.model.autoencoder.Autoencoder` — the VAE with its latent normalisation;
* a :class:`~lit_sr.model.parameterisation.Parameterisation` — ε, v or flow matching, read from the
  folder's scheduler config;
* a :class:`~lit_sr.model.condition.PromptEncoder` (CLIP; CLIP-L + CLIP-G (+ T5) for SD3) and an
  optional CLIP vision encoder (VPIM, MEM).

Each family (``lit_sr/model/families/``) loads a local diffusers folder (``local_files_only``;
nothing is ever fetched) and builds a tiny random-initialised version for tests and the CPU
default. This module holds what the families share.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_sr.errors import WeightsError
from lit_sr.model.autoencoder import Autoencoder
from lit_sr.model.condition import PromptEncoder
from lit_sr.model.denoiser import Denoiser
from lit_sr.model.parameterisation import Parameterisation


@dataclass
class Backbone:
    """Frozen pretrained parts (see the module docstring)."""

    denoiser: Denoiser
    autoencoder: Autoencoder
    parameterisation: Parameterisation
    prompts: PromptEncoder | None = None
    vision_encoder: nn.Module | None = None
    name: str = "custom"

    @property
    def family(self) -> str:
        return self.denoiser.family

    @property
    def vae_scale_factor(self) -> int:
        return self.autoencoder.factor

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.channels

    @property
    def tokenizer(self):
        return self.prompts.tokenizer if self.prompts is not None else None

    @property
    def num_train_timesteps(self) -> int:
        return self.parameterisation.num_train_timesteps


# ---------------------------------------------------------------------------------------------
# Shared by the family loaders
# ---------------------------------------------------------------------------------------------

def builder(family: str, parameterisation: Callable[[Any], Parameterisation]):
    """Declare a function as a backbone builder of ``family``, with a cheap reader of its parameterisation.

    The config layer checks a run before anything is loaded (a bad noise timestep, LQFM where
    λ_t = 0): it asks the builder named by ``backbone._target_`` for the family and for the
    parameterisation its node describes (``parameterisation(node)`` reads a scheduler config, never weights).
    """

    def mark(fn):
        fn.backbone_family = family
        fn.parameterisation_of = parameterisation
        return fn

    return mark


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(set(_DTYPES))}")
    return _DTYPES[name]


def require(path: Path, what: str, key: str = "backbone.path") -> Path:
    if not path.exists():
        raise WeightsError(f"{key}: {what} not found: {path}")
    return path


def backbone_root(path, key: str = "backbone.path", example: str = "/models/sd-2-1-base") -> Path:
    """The local folder ``path`` names, or one line saying it is unset or missing."""
    if path in (None, "", "???"):
        raise WeightsError(f"{key} is not set: give a local diffusers directory (e.g. {key}={example})")
    return require(Path(path).expanduser(), "directory", key)


def freeze(*modules: nn.Module | None) -> None:
    for m in modules:
        if m is not None:
            m.requires_grad_(False)
            m.eval()


def cast(dtype: str, *modules: nn.Module | None) -> None:
    """Store frozen weights in ``dtype`` (the tiny builders; loaders pass ``torch_dtype``)."""
    torch_dtype = parse_dtype(dtype)
    for m in modules:
        if m is not None and torch_dtype != torch.float32:
            m.to(torch_dtype)


def load_vision_encoder(path, dtype: torch.dtype) -> nn.Module | None:
    """A local ``CLIPVisionModel`` directory (VPIM/MEM), or None."""
    if not path:
        return None
    from transformers import CLIPVisionModel

    root = Path(path).expanduser()
    if not root.exists():
        raise WeightsError(f"backbone.vision_encoder: directory not found: {root}")
    return CLIPVisionModel.from_pretrained(root, local_files_only=True, torch_dtype=dtype)


def load_vae(root: Path, dtype: torch.dtype) -> Autoencoder:
    from diffusers import AutoencoderKL

    require(root / "vae", "'vae' folder")
    try:
        return Autoencoder(AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=True, torch_dtype=dtype))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"backbone.path: cannot load the VAE from {root}: {str(exc).splitlines()[0]}") from exc


TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=32,
)


def tiny_vision_encoder() -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return CLIPVisionModel(CLIPVisionConfig(**TINY_VISION))
