"""Record the UNet's cross-attention probabilities (for TMG's CoMat loss) only when asked.

:func:`install` replaces the processors of the chosen ``attn2`` (cross-attention) layers with a
:class:`CaptureProcessor` and returns the shared :class:`AttentionStore`; :func:`remove` puts the
original processor objects back. Nothing is installed unless a loss asks for it, so a run
without TMG keeps diffusers' SDPA processors untouched.

While capturing, a processor computes the attention explicitly (``softmax(QKᵀ·scale)``, which
SDPA does not expose), records it per head as ``(B, heads, HW, L)`` together with the layer's
spatial size, and returns the same output as the original processor. A call is captured when the
store is enabled and gradients are on (the training pass of the generator); otherwise the
original processor runs, so validation and frozen score-network passes cost nothing extra.

Each UNet call is one :class:`CaptureRecord` (held in a short ring), tagged with the ``sample``
tensor the UNet received, so a loss can pick the call that produced *its* output.
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
    """Cross-attention probabilities of one layer in one UNet call."""

    heads: torch.Tensor  # (B, heads, h*w, L): each head's softmax over the L text tokens
    size: tuple[int, int]  # (h, w) of the layer's feature map

    @property
    def probs(self) -> torch.Tensor:
        """(B, h*w, L) averaged over heads."""
        return self.heads.mean(dim=1)


@dataclass
class CaptureRecord:
    sample: torch.Tensor  # the UNet's input latent of this call
    latent_size: tuple[int, int]
    layers: dict[str, LayerAttention] = field(default_factory=dict)


class AttentionStore:
    """Capture switch, layer selection and the records of the last few UNet calls."""

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
        """Start a record for one UNet call (called by the UNet's forward pre-hook)."""
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
        """The record of the UNet call that received ``sample`` (the newest one if None); consumed."""
        for rec in reversed(self.records):
            if sample is None or rec.sample is sample:
                self.records.clear()  # older calls are of no use any more; free their graphs
                return rec
        return None


class CaptureProcessor:
    """An attention processor that records probabilities while the store captures."""

    def __init__(self, store: AttentionStore, name: str, original) -> None:
        self.store, self.name, self.original = store, name, original

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        store = self.store
        size = None
        if encoder_hidden_states is not None and store._current is not None and store.capturing:
            tokens = hidden_states.shape[-2] * hidden_states.shape[-1] if hidden_states.ndim == 4 else hidden_states.shape[1]
            size = store.layer_size(tokens)
            if size is not None and not store.wants(size):
                size = None
        if size is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return self._explicit(attn, hidden_states, encoder_hidden_states, attention_mask, temb, size)

    def _explicit(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, size):
        # Mirrors diffusers' AttnProcessor2_0 step by step, with the softmax made explicit.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, seq_len, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        # float32 softmax: the loss divides sums of probabilities; half precision is too coarse.
        scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask.float()
        probs = scores.softmax(dim=-1)  # (B, heads, HW, L)
        self.store.record(self.name, probs, size)
        hidden_states = torch.matmul(probs.to(value.dtype), value)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def cross_attention_layers(unet: nn.Module, layers: list[str] | None = None) -> dict[str, nn.Module]:
    """``attn2`` modules of ``unet`` whose name matches any regex in ``layers`` (all when None)."""
    patterns = [re.compile(p) for p in (layers or [])]
    found = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2") and hasattr(module, "set_processor"):
            if not patterns or any(p.search(name) for p in patterns):
                found[name] = module
    return found


def _pre_hook(module: nn.Module, args, kwargs):
    store: AttentionStore = getattr(module, STORE_ATTR)
    sample = args[0] if args else kwargs.get("sample")
    store.begin(sample)


def install(unet: nn.Module, layers: list[str] | None = None, downsample: list[int] | None = None,
            require_grad: bool = True) -> AttentionStore:
    """Capture cross-attention in the matching ``attn2`` layers of ``unet``; returns the store.

    ``layers``: regexes searched in module names (e.g. ``["up_blocks", "mid_block"]``);
    ``downsample``: keep only layers at these factors below the latent (e.g. ``[2, 4]``).
    """
    if getattr(unet, STORE_ATTR, None) is not None:
        raise ValueError("cross-attention capture is already installed on this UNet")
    modules = cross_attention_layers(unet, layers)
    if not modules:
        raise ValueError(f"no cross-attention (attn2) layer matches {layers!r}")
    store = AttentionStore(downsample, require_grad=require_grad)
    for name, module in modules.items():
        store.originals[name] = module.processor
        module.set_processor(CaptureProcessor(store, name, module.processor))
    store._hook = unet.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    object.__setattr__(unet, STORE_ATTR, store)  # a plain attribute: not a submodule, not state
    return store


def remove(unet: nn.Module) -> None:
    """Restore the original processors (no-op when nothing is installed)."""
    store: AttentionStore | None = getattr(unet, STORE_ATTR, None)
    if store is None:
        return
    modules = dict(unet.named_modules())
    for name, original in store.originals.items():
        modules[name].set_processor(original)
    if store._hook is not None:
        store._hook.remove()
    store.records.clear()
    object.__delattr__(unet, STORE_ATTR)


def installed_store(unet: nn.Module) -> AttentionStore | None:
    return getattr(unet, STORE_ATTR, None)
