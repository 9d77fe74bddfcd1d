"""What a component may know about the rest of the run when it checks a combination.

Components declare ``requires(node, facts) -> str | None`` (a classmethod): ``node`` is their own
config node, ``facts`` the few run-wide facts below, read from the composed config before
anything is built. A returned string is the one-line reason the combination cannot work. The
component never sees (or depends on) the layout of the whole config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunFacts:
    text_encoder: bool = True  # the backbone provides a CLIP text encoder
    vision_encoder: bool = False  # the backbone provides a CLIP vision encoder
    conditioning_uses_text: bool = False  # the conditioner reads per-image prompts
    mask_cache: str | None = None  # TMG noun-mask cache of the training data
    tile_latent: int | None = None  # the generator tiles the UNet pass (model.tile_latent)
    noise_has_knob: bool = False  # the noise strategy has a fidelity-realism knob
    endpoints: bool = False  # the model has fidelity/realism endpoints (IFCSR γ)
    has_val: bool = True  # a validation set and metrics are configured
    val_crop: int | None = None  # side of the square validation HQ crops (None: whole images or unknown)
    parameterisation: str = "epsilon"  # the backbone's: epsilon | v_prediction | flow
    family: str = "unet"  # the backbone's denoiser family: unet | mmdit
    noise_fixed_timestep: int | None = None  # the one timestep of a strategy without a range (uniform)


class Checked:
    """Mixin of components that can reject a combination at config time, before anything is built.

    The config layer calls :meth:`requires` for every ``_target_`` node whose target derives from
    this class (noise strategies, conditioners, modulations, loss terms, some callbacks).
    """

    @classmethod
    def requires(cls, node: Any, facts: RunFacts) -> str | None:
        """One line when this component cannot work with the rest of the run (None: fine)."""
        return None
