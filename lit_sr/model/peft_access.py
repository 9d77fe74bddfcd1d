"""The two peft tuner-layer attributes lit_sr sets directly, in one place.

peft's public switches (``set_adapter``, ``enable_adapters``, ``disable_adapters``) also rewrite
``requires_grad`` on every adapter they touch, which would change what trains whenever a pass
switches adapters (VSD's real/fake passes, the base-encoder HQ latent; see
:mod:`lit_sr.model.adapters`). A tuner layer's forward reads only its active-adapter list and its
disabled flag, so these are set directly — here only. ``tests/test_peft_access.py`` pins what
they must do (outputs equal to peft's own switches, no ``requires_grad`` change), so a peft
release that renames or repurposes them fails that test instead of training the wrong weights.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def set_active(layer: nn.Module, names: Sequence[str]) -> None:
    """Make exactly ``names`` active on one peft tuner layer (``[]``: the base layer alone)."""
    layer._disable_adapters = not names
    if names:
        layer._active_adapter = list(names)
