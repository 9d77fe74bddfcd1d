"""Peak memory of real-size models without the memory: PyTorch fake tensors and a live-bytes tracker.

Under :func:`fake_mode` every tensor is a ``FakeTensor`` (shape, dtype and device, no data), so
an SD-2.1-size training step "runs" in seconds on a laptop-sized machine. :class:`PeakTracker`
sees every operator's outputs, counts the bytes of each storage created inside its block while
it is alive (weak references tell it when a storage is freed) and keeps the peak — the quantity
``torch.cuda.max_memory_allocated`` reports on a GPU (live tensors; the caching allocator's
fragmentation and the CUDA context come on top, typically a few hundred MB to ~10 %).

The tensors are fake *CPU* tensors: this torch build has no CUDA, and fake CUDA tensors fail
at the first random-number or device-guard call. Two places where a GPU run allocates
differently are modelled:

* attention: on a GPU, ``scaled_dot_product_attention`` runs a fused (flash / memory-efficient)
  kernel that never materialises the (N × N) attention matrix; it saves q, k, v, the output and
  a float32 log-sum-exp per query for backward. :class:`FusedAttention` allocates exactly that
  (the CPU math path would store the N² matrix instead). Explicit-softmax attention (TMG's
  capture processors) is traced as it is and costs its N×L probabilities, as on a GPU;
* autocast: CPU autocast (bfloat16) casts the same op families as CUDA autocast does for the
  operations these models use (convolutions, linear layers and matmuls to bf16; normalisation
  and softmax kept float32).
"""
from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTracker(TorchDispatchMode):
    """Live bytes of the storages created inside the block (``current``) and their maximum (``peak``).

    Only storages that did not exist when the block was entered are counted. An operator can
    return a tensor on an older storage — a view of a weight (``F.linear``'s ``weight.t()``), an
    in-place update of a parameter or of optimizer state — and counting it would add that storage
    once more on top of what is already resident, for as long as it lives (for a frozen weight:
    always). On entry the storages of every live tensor are recorded and skipped later.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, weakref.ref] = {}
        self.before: dict[int, weakref.ref] = {}
        self.current = 0
        self.peak = 0

    def __enter__(self):
        self.before = {}
        with warnings.catch_warnings():  # isinstance on some objects warns about deprecated attributes
            warnings.simplefilter("ignore")
            tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
        for obj in tensors:
            try:
                storage = obj.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            self.before.setdefault(id(storage), weakref.ref(storage))
        return super().__enter__()

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        old = self.before.get(key)
        if old is not None and old() is storage:  # existed before the block: resident, not counted here
            return
        if key in self.live:  # a view of a storage already counted
            return
        size = storage.nbytes()

        def freed(_ref, key=key, size=size) -> None:
            if self.live.pop(key, None) is not None:
                self.current -= size

        self.live[key] = weakref.ref(storage, freed)
        self.current += size
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


class FusedAttention(torch.autograd.Function):
    """The memory of a fused SDPA kernel: output plus saved q, k, v, output and float32 log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _out, _lse = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


_REAL_SDPA = F.scaled_dot_product_attention


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if attn_mask is not None or is_causal:  # CLIP's causal 77-token attention: small, traced as it is
        return _REAL_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    return FusedAttention.apply(query, key, value)


@contextmanager
def fake_mode() -> Iterator[None]:
    """Fake tensors, fused-attention memory, and module dtype casts that work on fake parameters."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    real_swap = torch.utils.swap_tensors

    def swap(a, b):  # Module.to() swaps parameters; a fake parameter carries a weakref that forbids it
        try:
            real_swap(a, b)
        except RuntimeError as exc:
            if "weakref" not in str(exc):
                raise
            with torch.no_grad():
                a.data = b.data

    torch.utils.swap_tensors, F.scaled_dot_product_attention = swap, _fused_sdpa
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            yield
    finally:
        torch.utils.swap_tensors, F.scaled_dot_product_attention = real_swap, _REAL_SDPA


def state_bytes(*objects) -> int:
    """Bytes of the unique storages of modules' parameters and buffers and optimizers' state."""
    seen: set[int] = set()
    total = 0
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            tensors = [*obj.parameters(), *obj.buffers()]
        elif isinstance(obj, torch.optim.Optimizer):
            tensors = [v for s in obj.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        else:
            tensors = [t for t in obj if isinstance(t, torch.Tensor)]
        for t in tensors:
            st = t.untyped_storage()
            if id(st) not in seen:
                seen.add(id(st))
                total += st.nbytes()
    return total


def sd21_backbone(dtype: torch.dtype = torch.float32, vision: bool = False, text_layers: int | None = None):
    """SD-2.1-base (UNet, VAE, OpenCLIP-H text tower; ViT-H vision tower for VPIM) with the published
    configurations, built from their configs (random or fake weights, nothing is read from disk)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from lit_sr.model.autoencoder import Autoencoder
    from lit_sr.model.backbone import Backbone
    from lit_sr.model.clip_vocab import byte_level_clip_tokenizer
    from lit_sr.model.families.sd import CLIPPrompts, UNetDenoiser
    from lit_sr.model.parameterisation import SD_SCHEDULER, from_scheduler_config
    from lit_sr.model.random_backbone import OPENCLIP_H_TEXT, OPENCLIP_H_VISION, SD21_UNET, SD21_VAE

    text_cfg = dict(OPENCLIP_H_TEXT, **({"num_hidden_layers": text_layers} if text_layers else {}))
    text_cfg.pop("architectures", None)
    vision_cfg = {k: v for k, v in OPENCLIP_H_VISION.items() if k != "architectures"}
    unet, vae = UNet2DConditionModel(**SD21_UNET), AutoencoderKL(**SD21_VAE)
    text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    vis = CLIPVisionModel(CLIPVisionConfig(**vision_cfg)) if vision else None
    for module in (unet, vae, text, vis):
        if module is not None:
            module.to(dtype).requires_grad_(False).eval()
    return Backbone(denoiser=UNetDenoiser(unet), autoencoder=Autoencoder(vae),
                    parameterisation=from_scheduler_config(SD_SCHEDULER), prompts=CLIPPrompts(text, byte_level_clip_tokenizer()),
                    vision_encoder=vis, name="sd21-arch")


def sd3_backbone(dtype: torch.dtype = torch.float32, vision: bool = False, arch: str = "sd35-medium",
                 layers: int | None = None, text_layers: int | None = None):
    """SD3 / SD3.5-medium (MM-DiT, 16-channel VAE, CLIP-L + CLIP-G/14 text towers; ViT-H vision tower for
    VPIM) with the published configurations, built from their configs (random or fake weights). No T5:
    its 256 positions are zeros, as diffusers' pipeline without ``text_encoder_3``."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModel

    from lit_sr.model.autoencoder import Autoencoder
    from lit_sr.model.backbone import Backbone
    from lit_sr.model.clip_vocab import byte_level_clip_tokenizer
    from lit_sr.model.families.sd3 import MMDiTDenoiser, SD3Prompts
    from lit_sr.model.parameterisation import FlowMatching
    from lit_sr.model.random_backbone import (
        CLIP_G_TEXT,
        CLIP_L_TEXT,
        OPENCLIP_H_VISION,
        SD3_VAE,
        model_fields,
        sd3_transformer_config,
    )

    def text(cfg: dict) -> dict:
        fields = model_fields(cfg)
        return {**fields, "num_hidden_layers": text_layers} if text_layers else fields

    cfg = sd3_transformer_config(arch, layers)
    net, vae = SD3Transformer2DModel(**cfg), AutoencoderKL(**SD3_VAE)
    clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**text(CLIP_L_TEXT)))
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**text(CLIP_G_TEXT)))
    vis = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in OPENCLIP_H_VISION.items() if k != "architectures"})) \
        if vision else None
    for module in (net, vae, clip_l, clip_g, vis):
        if module is not None:
            module.to(dtype).requires_grad_(False).eval()
    tok = byte_level_clip_tokenizer()
    prompts = SD3Prompts(clip_l, clip_g, tok, byte_level_clip_tokenizer(pad_token="!"), cfg["joint_attention_dim"])
    return Backbone(denoiser=MMDiTDenoiser(net), autoencoder=Autoencoder(vae), parameterisation=FlowMatching(1000, 3.0),
                    prompts=prompts, vision_encoder=vis, name=f"{arch}-arch")
