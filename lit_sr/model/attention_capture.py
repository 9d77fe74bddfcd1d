"""Record a denoiser's image-query → text-key attention (for TMG's CoMat loss) only when asked.

:func:`install` replaces the processors of the denoiser's capture points (a UNet's ``attn2``
cross-attention, an MM-DiT's joint attention; :meth:`Denoiser.capture_points`) with the family's
:class:`CaptureProcessor` and returns the shared :class:`AttentionStore`; :func:`remove` puts the
original processor objects back. Nothing is installed unless a loss asks for it, so a run
without TMG keeps diffusers' SDPA processors untouched.

While capturing, a processor computes the attention explicitly (``softmax(QKᵀ·scale)``, which
SDPA does not expose), records the image-query → text-key probabilities per head as
``(B, heads, HW, L)`` together with the layer's spatial size, and returns the same output as the
original processor. A call is captured when the store is enabled and gradients are on (the
training pass of the generator); otherwise the original processor runs, so validation and frozen
score-network passes cost nothing extra.

Each denoiser call is one :class:`CaptureRecord` (held in a short ring), tagged with the latent
tensor the denoiser received, so a loss can pick the call that produced *its* output.
"""
from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import nn

STORE_ATTR = "_lit_sr_attention_store"


@dataclass
class LayerAttention:
    """Image-query → text-key attention probabilities of one layer in one denoiser call."""

    heads: torch.Tensor  # (B, heads, h*w, L): each head's attention to the L text tokens
    size: tuple[int, int]  # (h, w) of the layer's feature map

    @property
    def probs(self) -> torch.Tensor:
        """(B, h*w, L) averaged over heads."""
        return self.heads.mean(dim=1)


@dataclass
class CaptureRecord:
    sample: torch.Tensor  # the denoiser's input latent of this call
    latent_size: tuple[int, int]
    layers: dict[str, LayerAttention] = field(default_factory=dict)


class AttentionStore:
    """Capture switch, layer selection and the records of the last few denoiser calls."""

    def __init__(self, downsample: list[int] | None = None, ring: int = 4, require_grad: bool = True) -> None:
        self.downsample = None if downsample is None else {int(d) for d in downsample}
        self.enabled = True
        self.require_grad = bool(require_grad)
        self.records: deque[CaptureRecord] = deque(maxlen=ring)
        self.originals: dict[str, object] = {}  # layer name → original processor
        self._current: CaptureRecord | None = None
        self._hook = None

    @property
    def capturing(self) -> bool:
        return self.enabled and (torch.is_grad_enabled() or not self.require_grad)

    def begin(self, sample: torch.Tensor) -> None:
        """Start a record for one denoiser call (called by its forward pre-hook)."""
        if self.capturing:
            self._current = CaptureRecord(sample=sample, latent_size=tuple(sample.shape[-2:]))
            self.records.append(self._current)
        else:
            self._current = None

    def layer_size(self, tokens: int) -> tuple[int, int] | None:
        """The (h, w) of a layer with ``tokens`` positions: the latent downsampled by 2^k."""
        if self._current is None:
            return None
        h, w = self._current.latent_size
        for k in range(8):
            f = 2**k
            hh, ww = math.ceil(h / f), math.ceil(w / f)
            if hh * ww == tokens:
                return hh, ww
        return None

    def wants(self, size: tuple[int, int]) -> bool:
        if self.downsample is None:
            return True
        return round(self._current.latent_size[0] / size[0]) in self.downsample

    def record(self, name: str, probs: torch.Tensor, size: tuple[int, int]) -> None:
        self._current.layers[name] = LayerAttention(probs, size)

    def take(self, sample: torch.Tensor | None = None) -> CaptureRecord | None:
        """The record of the denoiser call that received ``sample`` (the newest one if None); consumed."""
        for rec in reversed(self.records):
            if sample is None or rec.sample is sample:
                self.records.clear()  # older calls are of no use any more; free their graphs
                return rec
        return None


class CaptureProcessor:
    """An attention processor that records image-query → text-key probabilities while the store captures.

    Families subclass it with :meth:`explicit`: the original processor's computation step by step
    with the softmax made explicit (SDPA does not expose it), returning the same output.
    """

    def __init__(self, store: AttentionStore, name: str, original) -> None:
        self.store, self.name, self.original = store, name, original

    def image_tokens(self, hidden_states: torch.Tensor) -> int:
        return hidden_states.shape[-2] * hidden_states.shape[-1] if hidden_states.ndim == 4 else hidden_states.shape[1]

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs):
        store = self.store
        size = None
        if encoder_hidden_states is not None and store._current is not None and store.capturing:
            size = store.layer_size(self.image_tokens(hidden_states))
            if size is not None and not store.wants(size):
                size = None
        if size is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        return self.explicit(attn, hidden_states, encoder_hidden_states, attention_mask, size, *args, **kwargs)

    def explicit(self, attn, hidden_states, encoder_hidden_states, attention_mask, size, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement explicit()")


def _pre_hook(module: nn.Module, args, kwargs):
    store: AttentionStore = getattr(module, STORE_ATTR)
    sample = args[0] if args else kwargs.get("latent")
    store.begin(sample)


def capture_layers(denoiser: nn.Module, layers: list[str] | None = None) -> dict[str, nn.Module]:
    """The denoiser's capture points whose name matches any regex in ``layers`` (all when None)."""
    patterns = [re.compile(p) for p in (layers or [])]
    return {name: module for name, module in denoiser.capture_points().items()
            if not patterns or any(p.search(name) for p in patterns)}


def install(denoiser: nn.Module, layers: list[str] | None = None, downsample: list[int] | None = None,
            require_grad: bool = True) -> AttentionStore:
    """Capture text attention at the matching capture points of ``denoiser``; returns the store.

    ``layers``: regexes searched in the points' names (e.g. ``["up_blocks", "mid_block"]`` on a UNet,
    ``["transformer_blocks\\.[0-3]\\."]`` on an MM-DiT); ``downsample``: keep only layers at these
    factors below the latent (e.g. ``[2, 4]``; every MM-DiT layer sits at its patch size).
    """
    if getattr(denoiser, STORE_ATTR, None) is not None:
        raise ValueError("attention capture is already installed on this denoiser")
    modules = capture_layers(denoiser, layers)
    if not modules:
        raise ValueError(f"no text-attention layer of the {type(denoiser).__name__} matches {layers!r}")
    store = AttentionStore(downsample, require_grad=require_grad)
    for name, module in modules.items():
        store.originals[name] = module.processor
        module.set_processor(denoiser.capture_processor(store, name, module.processor))
    store._hook = denoiser.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    object.__setattr__(denoiser, STORE_ATTR, store)  # a plain attribute: not a submodule, not state
    return store


def remove(denoiser: nn.Module) -> None:
    """Restore the original processors (no-op when nothing is installed)."""
    store: AttentionStore | None = getattr(denoiser, STORE_ATTR, None)
    if store is None:
        return
    points = denoiser.capture_points()
    for name, original in store.originals.items():
        points[name].set_processor(original)
    if store._hook is not None:
        store._hook.remove()
    store.records.clear()
    object.__delattr__(denoiser, STORE_ATTR)


def installed_store(denoiser: nn.Module) -> AttentionStore | None:
    return getattr(denoiser, STORE_ATTR, None)
