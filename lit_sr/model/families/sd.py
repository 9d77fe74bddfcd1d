"""The Stable Diffusion 1.x/2.x family: a ``UNet2DConditionModel`` cross-attending to CLIP text states.

* :class:`UNetDenoiser` — modulation after ``conv_in``, CoMat capture on the ``attn2``
  cross-attention layers, OSEDiff's LoRA targets, diffusers' ``StableDiffusionPipeline`` LoRA format;
* :class:`CLIPPrompts` — the text encoder's last hidden states (SD-2's text tower already ends at
  OpenCLIP's penultimate layer);
* :func:`load_sd` — a local diffusers folder (SD-2.1-base, SD-Turbo, SD-2.1 768-v: the scheduler
  config's ``prediction_type`` decides ε or v);
* :func:`tiny_sd` — the small random UNet of the tests (4-channel ×4 VAE, ``backbone=tiny``) and of
  the CPU default (16-channel ×4 VAE trained 8000 steps, ``backbone=tiny16``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lit_sr.errors import WeightsError
from lit_sr.model.attention_capture import CaptureProcessor
from lit_sr.model.autoencoder import Autoencoder
from lit_sr.model.backbone import (
    Backbone,
    backbone_root,
    builder,
    cast,
    freeze,
    load_vae,
    load_vision_encoder,
    parse_dtype,
    require,
    tiny_vision_encoder,
)
from lit_sr.model.clip_vocab import byte_level_clip_tokenizer
from lit_sr.model.condition import Condition, PromptEncoder
from lit_sr.model.conditioning.frozen import FrozenModule
from lit_sr.model.denoiser import Denoiser
from lit_sr.model.parameterisation import SD_SCHEDULER, Parameterisation, from_scheduler_config, read_parameterisation
from lit_sr.model.tiny_vae import tiny_vae
from lit_sr.typed import LocalDir

# OSEDiff's LoRA targets (from its training script): every attention projection, conv and
# feed-forward layer of the UNet. conf/lora_targets/unet.yaml names the same lists (a test keeps them equal).
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut", "conv_out",
                "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj"]
UNET_CROSS_ATTENTION = ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]  # CODSR's stage-2 LoRA

TINY_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),  # attention only at the lower resolution, as SD
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
)


class UNetDenoiser(Denoiser):
    """A diffusers ``UNet2DConditionModel`` (see the module docstring)."""

    family = "unet"
    pipeline_name = "StableDiffusionPipeline"
    lora_presets = {"all": UNET_TARGETS, "cross_attention": UNET_CROSS_ATTENTION}

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.net.config.block_out_channels) - 1)

    @property
    def in_channels(self) -> int:
        return int(self.net.config.in_channels)

    @property
    def cond_width(self) -> int:
        dim = self.net.config.cross_attention_dim
        return int(dim if isinstance(dim, int) else dim[0])

    @property
    def modulation_channels(self) -> int:
        return int(self.net.conv_in.out_channels)

    def modulation_point(self) -> nn.Module:
        return self.net.conv_in

    def predict(self, latent: torch.Tensor, timestep: torch.Tensor, cond: Condition) -> torch.Tensor:
        return self.net(latent, timestep, encoder_hidden_states=cond.tokens).sample

    def capture_points(self) -> dict[str, nn.Module]:
        return {name: m for name, m in self.net.named_modules() if name.endswith("attn2") and hasattr(m, "set_processor")}

    def capture_processor(self, store, name: str, original) -> CaptureProcessor:
        return CrossAttentionCapture(store, name, original)

    def save_lora(self, folder, state: dict[str, torch.Tensor], weight_name: str, metadata: dict) -> None:
        # The LoRA mixin, not StableDiffusionPipeline: importing the pipeline pulls in transformers
        # image processors that announce a missing torchvision; saving needs neither.
        from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

        StableDiffusionLoraLoaderMixin.save_lora_weights(folder, unet_lora_layers=state, weight_name=weight_name,
                                                         safe_serialization=True, unet_lora_adapter_metadata=metadata)


class CrossAttentionCapture(CaptureProcessor):
    """diffusers' ``AttnProcessor2_0`` on a cross-attention layer, step by step with the softmax made explicit."""

    def explicit(self, attn, hidden_states, encoder_hidden_states, attention_mask, size, temb=None, *args, **kwargs):
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


class CLIPPrompts(PromptEncoder):
    """SD-1/2 prompts: the CLIP text encoder's hidden states, padded to the tokenizer's max length."""

    def __init__(self, text_encoder: nn.Module, tokenizer) -> None:
        self._encoder = FrozenModule(text_encoder)
        self.tokenizer = tokenizer

    @property
    def text_encoder(self) -> nn.Module:
        return self._encoder.module

    @torch.no_grad()
    def encode(self, prompts: list[str], ref: torch.Tensor | None = None) -> Condition:
        encoder = self._encoder.module if ref is None else self._encoder.on(ref)
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        device = next(encoder.parameters()).device
        return Condition(encoder(ids.to(device))[0].float())


def _tiny_parameterisation(node) -> Parameterisation:
    kind = str(node.get("prediction_type", "epsilon"))
    return from_scheduler_config({**SD_SCHEDULER, "prediction_type": kind}, "backbone.prediction_type")


@builder("unet", lambda node: read_parameterisation(node.get("path")))
def load_sd(
    path: LocalDir,
    text_encoder: bool = True,
    vision_encoder: LocalDir | None = None,
    dtype: str = "fp32",
) -> Backbone:
    """UNet, VAE, parameterisation and (optionally) CLIP encoders from a local SD-1/2 diffusers folder.

    ``vision_encoder`` is a separate local directory of a ``CLIPVisionModel`` (VPIM/MEM only).
    Missing directories or files fail with one line naming them; nothing is downloaded.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = backbone_root(path)
    torch_dtype = parse_dtype(dtype)
    for sub in ("unet", "vae", "scheduler"):
        require(root / sub, f"'{sub}' folder")
    param = read_parameterisation(root)  # an unsupported prediction type fails before the weights load
    if param.kind == "flow":
        raise WeightsError(f"backbone.path: {root} has a flow-matching scheduler (an SD3-family folder): use backbone=sd3")
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True, torch_dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"backbone.path: cannot load the UNet from {root}: {str(exc).splitlines()[0]}") from exc
    vae = load_vae(root, torch_dtype)
    prompts = None
    te = None
    if text_encoder:
        require(root / "text_encoder", "'text_encoder' folder")
        require(root / "tokenizer", "'tokenizer' folder")
        te = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", local_files_only=True, torch_dtype=torch_dtype)
        prompts = CLIPPrompts(te, CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True))
    vis = load_vision_encoder(vision_encoder, torch_dtype)
    freeze(unet, vae, te, vis)
    return Backbone(denoiser=UNetDenoiser(unet), autoencoder=vae, parameterisation=param, prompts=prompts,
                    vision_encoder=vis, name=Path(root).name)


@builder("unet", _tiny_parameterisation)
def tiny_sd(
    seed: int = 0,
    text_encoder: bool = True,
    vision_encoder: bool = False,
    vae_pretrain_steps: int = 1500,
    unet: dict | None = None,
    dtype: str = "fp32",
    prediction_type: str = "epsilon",
    latent_channels: int = 4,
) -> Backbone:
    """Small random-initialised SD-shaped backbone built offline (seeded, deterministic).

    ``dtype`` is the storage dtype of the frozen weights (as ``load_sd``'s), so the low-precision
    path runs on the tiny model too; ``prediction_type`` (epsilon | v_prediction) the parameterisation;
    ``latent_channels`` 4 (SD-2's) or 16 (SD3's and FLUX's: a VAE that round-trips far better).
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = tiny_vae(seed, vae_pretrain_steps, latent_channels=latent_channels)
    torch.manual_seed(seed)
    channels = {"in_channels": int(latent_channels), "out_channels": int(latent_channels)}
    unet_model = UNet2DConditionModel(**dict(TINY_UNET, **channels, **(unet or {})))
    te = prompts = vis = None
    if text_encoder:
        tok = byte_level_clip_tokenizer()
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), **ids, **TINY_TEXT))
        prompts = CLIPPrompts(te, tok)
    if vision_encoder:
        vis = tiny_vision_encoder()
    freeze(unet_model, vae, te, vis)
    cast(dtype, unet_model, vae, te, vis)
    param = _tiny_parameterisation({"prediction_type": prediction_type})
    return Backbone(denoiser=UNetDenoiser(unet_model), autoencoder=Autoencoder(vae), parameterisation=param,
                    prompts=prompts, vision_encoder=vis, name="tiny")
