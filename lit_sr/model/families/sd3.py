"""The Stable Diffusion 3 family (SD3-medium, SD3.5-medium/large): an MM-DiT trained with flow matching.

* :class:`MMDiTDenoiser` — an ``SD3Transformer2DModel``: modulation after the patch embedding
  (on its token grid, one position per ``patch_size``² latent pixels), CoMat capture on the
  image-query → text-key part of each joint attention, LoRA on the attention projections of both
  streams (diffusers' SD3 LoRA format, so an export loads into ``StableDiffusion3Pipeline``);
* :class:`SD3Prompts` — CLIP-L and CLIP-G penultimate states side by side, zero-padded to the joint
  attention width, followed by T5 states (or, without T5, zeros, as diffusers' SD3 pipeline does);
  the pooled vector is both CLIPs' projections;
* :func:`load_sd3` — a local diffusers SD3 folder (``transformer/ vae/ scheduler/ text_encoder/
  text_encoder_2/ tokenizer/ tokenizer_2/``, optional ``text_encoder_3/ tokenizer_3/``);
* :func:`tiny_sd3` — a small random SD3.5-shaped backbone (dual attention in its first block,
  RMS q/k norm, 16-channel ×4 VAE with a shift factor) for tests and CPU runs.

The noise strategies see the flow time through the parameterisation only (``docs/backbones.md``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
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
from lit_sr.model.parameterisation import FlowMatching, Parameterisation, read_parameterisation
from lit_sr.model.tiny_vae import tiny_vae
from lit_sr.typed import LocalDir

# The attention projections of both streams (diffusers' SD3 LoRA training targets). conf/lora_targets/mmdit.yaml
# names the same lists (a test keeps them equal).
MMDIT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
# The image-query → text path of the joint attention: image queries, text keys/values, image output —
# what a UNet's attn2 q/k/v/out are (CODSR's stage-2 "cross-attention" LoRA).
MMDIT_CROSS_ATTENTION = ["attn.to_q", "attn.add_k_proj", "attn.add_v_proj", "attn.to_out.0"]

TINY_MMDIT = dict(
    sample_size=16,
    patch_size=2,
    in_channels=16,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=96,  # > the two CLIPs' 32 + 48: the zero padding of the real model is exercised
    caption_projection_dim=32,
    pooled_projection_dim=64,
    out_channels=16,
    pos_embed_max_size=64,  # latents up to 128² (512² images at ×4) in one pass; larger ones are tiled
    dual_attention_layers=(0,),  # SD3.5's extra image self-attention, in the first block
    qk_norm="rms_norm",
)
TINY_CLIP_L = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=77, projection_dim=32)
TINY_CLIP_G = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=77, projection_dim=32)
TINY_T5_TOKENS = 8  # zero T5 positions after the CLIP tokens (the real pipeline's 256)


class MMDiTDenoiser(Denoiser):
    """A diffusers ``SD3Transformer2DModel`` (see the module docstring)."""

    family = "mmdit"
    pipeline_name = "StableDiffusion3Pipeline"
    lora_presets = {"all": MMDIT_TARGETS, "cross_attention": MMDIT_CROSS_ATTENTION}

    @property
    def size_multiple(self) -> int:
        return int(self.net.config.patch_size)

    @property
    def patch(self) -> int:
        return int(self.net.config.patch_size)

    @property
    def max_latent_size(self) -> int | None:
        """Largest latent side one pass accepts (its positional embeddings); larger latents are tiled."""
        size = self.net.pos_embed.pos_embed_max_size
        return None if size is None else int(size) * self.patch

    @property
    def in_channels(self) -> int:
        return int(self.net.config.in_channels)

    @property
    def cond_width(self) -> int:
        return int(self.net.config.joint_attention_dim)

    @property
    def pooled_width(self) -> int | None:
        return int(self.net.config.pooled_projection_dim)

    @property
    def modulation_channels(self) -> int:
        return int(self.net.config.num_attention_heads * self.net.config.attention_head_dim)

    def modulation_point(self) -> nn.Module:
        return self.net.pos_embed

    def modulate(self, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        # Patch tokens (B, N, D) in row-major order of the (h/p, w/p) grid the maps are on.
        return h * (1 + gamma.flatten(2).transpose(1, 2)) + beta.flatten(2).transpose(1, 2)

    def predict(self, latent: torch.Tensor, timestep: torch.Tensor, cond: Condition) -> torch.Tensor:
        if cond.pooled is None:
            raise ValueError("the MM-DiT needs a pooled conditioning vector (Condition.pooled)")
        return self.net(hidden_states=latent, encoder_hidden_states=cond.tokens, pooled_projections=cond.pooled,
                        timestep=timestep).sample

    def capture_points(self) -> dict[str, nn.Module]:
        return {name: m for name, m in self.net.named_modules()
                if name.endswith(".attn") and getattr(m, "add_k_proj", None) is not None and hasattr(m, "set_processor")}

    def capture_processor(self, store, name: str, original) -> CaptureProcessor:
        return JointAttentionCapture(store, name, original)

    def save_lora(self, folder, state: dict[str, torch.Tensor], weight_name: str, metadata: dict) -> None:
        from diffusers.loaders.lora_pipeline import SD3LoraLoaderMixin

        SD3LoraLoaderMixin.save_lora_weights(folder, transformer_lora_layers=state, weight_name=weight_name,
                                             safe_serialization=True, transformer_lora_adapter_metadata=metadata)


class JointAttentionCapture(CaptureProcessor):
    """diffusers' ``JointAttnProcessor2_0`` step by step with the softmax made explicit.

    The joint softmax runs over image and text keys together; what is recorded is its image-query
    → text-key block, per head: the attention each image position pays to each text token.
    """

    def image_tokens(self, hidden_states: torch.Tensor) -> int:
        return hidden_states.shape[1]

    def explicit(self, attn, hidden_states, encoder_hidden_states, attention_mask, size, *args, **kwargs):
        residual = hidden_states
        batch = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        c_q = heads(attn.add_q_proj(encoder_hidden_states))
        c_k = heads(attn.add_k_proj(encoder_hidden_states))
        c_v = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            c_q = attn.norm_added_q(c_q)
        if attn.norm_added_k is not None:
            c_k = attn.norm_added_k(c_k)
        n = residual.shape[1]
        query, key, value = torch.cat([query, c_q], dim=2), torch.cat([key, c_k], dim=2), torch.cat([value, c_v], dim=2)
        # float32 softmax: the loss divides sums of probabilities; half precision is too coarse.
        probs = (torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale).softmax(dim=-1)
        self.store.record(self.name, probs[:, :, :n, n:], size)  # image queries → text keys
        out = torch.matmul(probs.to(value.dtype), value)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states, encoder_hidden_states = out[:, :n], out[:, n:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return hidden_states, encoder_hidden_states


class SD3Prompts(PromptEncoder):
    """SD3's prompt states (see the module docstring); ``t5`` None gives the zero T5 block."""

    def __init__(self, clip_l: nn.Module, clip_g: nn.Module, tokenizer_l, tokenizer_g, joint_width: int,
                 t5: nn.Module | None = None, tokenizer_t5=None, max_sequence_length: int = 256) -> None:
        if max_sequence_length < 0:
            raise ValueError(f"backbone.max_sequence_length must be >= 0, got {max_sequence_length}")
        self._clips = (FrozenModule(clip_l), FrozenModule(clip_g))
        self._tokenizers = (tokenizer_l, tokenizer_g)
        self._t5 = FrozenModule(t5) if t5 is not None else None
        self._tokenizer_t5 = tokenizer_t5
        self.tokenizer = tokenizer_l
        self.joint_width = int(joint_width)
        self.max_sequence_length = int(max_sequence_length)

    @torch.no_grad()
    def encode(self, prompts: list[str], ref: torch.Tensor | None = None) -> Condition:
        prompts = list(prompts)
        states, pooled = [], []
        for frozen, tok in zip(self._clips, self._tokenizers):
            encoder = frozen.module if ref is None else frozen.on(ref)
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
            states.append(out.hidden_states[-2].float())
            pooled.append(out.text_embeds.float())
        clip = torch.cat(states, dim=-1)
        if clip.shape[-1] > self.joint_width:
            raise WeightsError(f"the CLIP states ({clip.shape[-1]} wide) exceed the transformer's joint_attention_dim "
                               f"({self.joint_width})")
        clip = F.pad(clip, (0, self.joint_width - clip.shape[-1]))
        if self._t5 is not None:
            encoder = self._t5.module if ref is None else self._t5.on(ref)
            ids = self._tokenizer_t5(prompts, padding="max_length", max_length=self.max_sequence_length,
                                     truncation=True, add_special_tokens=True, return_tensors="pt").input_ids
            t5 = encoder(ids.to(next(encoder.parameters()).device))[0].float()
        else:
            t5 = clip.new_zeros(len(prompts), self.max_sequence_length, self.joint_width)
        return Condition(torch.cat([clip, t5.to(clip.device)], dim=-2), torch.cat(pooled, dim=-1))


T5_CHOICES = ("auto", "true", "false")


def _folder_parameterisation(node) -> Parameterisation:
    path = node.get("path")
    return FlowMatching(1000, 3.0) if path in (None, "", "???") else read_parameterisation(path)


@builder("mmdit", _folder_parameterisation)
def load_sd3(
    path: LocalDir,
    text_encoder: bool = True,
    t5: str | bool = "auto",
    max_sequence_length: int = 256,
    vision_encoder: LocalDir | None = None,
    dtype: str = "fp32",
) -> Backbone:
    """Transformer, VAE, flow parameterisation and the text encoders from a local SD3/SD3.5 folder.

    ``t5``: ``auto`` loads ``text_encoder_3/`` when the folder has it, ``true`` requires it,
    ``false`` leaves it out (its states are then zeros, as in diffusers' pipeline without T5).
    """
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    root = backbone_root(path, example="/models/stable-diffusion-3.5-medium")
    t5_mode = str(t5).lower()
    if t5_mode not in T5_CHOICES:
        raise WeightsError(f"backbone.t5 must be one of {', '.join(T5_CHOICES)}, got {t5!r}")
    torch_dtype = parse_dtype(dtype)
    for sub in ("transformer", "vae", "scheduler"):
        require(root / sub, f"'{sub}' folder")
    param = read_parameterisation(root)
    if not isinstance(param, FlowMatching):
        raise WeightsError(f"backbone.path: {root} has a {param.kind} scheduler, not flow matching: use backbone=sd21")
    try:
        net = SD3Transformer2DModel.from_pretrained(root, subfolder="transformer", local_files_only=True,
                                                    torch_dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"backbone.path: cannot load the transformer from {root}: {str(exc).splitlines()[0]}") from exc
    vae = load_vae(root, torch_dtype)
    prompts, encoders = None, []
    if text_encoder:
        for sub in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            require(root / sub, f"'{sub}' folder")
        clip_l = CLIPTextModelWithProjection.from_pretrained(root, subfolder="text_encoder", local_files_only=True,
                                                             torch_dtype=torch_dtype)
        clip_g = CLIPTextModelWithProjection.from_pretrained(root, subfolder="text_encoder_2", local_files_only=True,
                                                             torch_dtype=torch_dtype)
        tok_l = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True)
        tok_g = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2", local_files_only=True)
        t5_model = tok_t5 = None
        has_t5 = (root / "text_encoder_3").is_dir() and (root / "tokenizer_3").is_dir()
        if t5_mode == "true" and not has_t5:
            raise WeightsError(f"backbone.t5=true but {root} has no text_encoder_3/ and tokenizer_3/ folders")
        if t5_mode == "true" or (t5_mode == "auto" and has_t5):
            from transformers import AutoTokenizer, T5EncoderModel

            t5_model = T5EncoderModel.from_pretrained(root, subfolder="text_encoder_3", local_files_only=True,
                                                      torch_dtype=torch_dtype)
            tok_t5 = AutoTokenizer.from_pretrained(root, subfolder="tokenizer_3", local_files_only=True)
        encoders = [clip_l, clip_g, t5_model]
        prompts = SD3Prompts(clip_l, clip_g, tok_l, tok_g, int(net.config.joint_attention_dim), t5_model, tok_t5,
                             max_sequence_length)
    vis = load_vision_encoder(vision_encoder, torch_dtype)
    freeze(net, vae, vis, *encoders)
    return Backbone(denoiser=MMDiTDenoiser(net), autoencoder=vae, parameterisation=param, prompts=prompts,
                    vision_encoder=vis, name=Path(root).name)


@builder("mmdit", lambda node: FlowMatching(1000, float(node.get("shift", 3.0))))
def tiny_sd3(
    seed: int = 0,
    text_encoder: bool = True,
    vision_encoder: bool = False,
    vae_pretrain_steps: int = 8000,
    transformer: dict | None = None,
    shift: float = 3.0,
    dtype: str = "fp32",
) -> Backbone:
    """Small random-initialised SD3.5-shaped backbone built offline (seeded, deterministic)."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    vae = tiny_vae(seed, vae_pretrain_steps, latent_channels=16)
    torch.manual_seed(seed)
    cfg = dict(TINY_MMDIT, **(transformer or {}))
    net = SD3Transformer2DModel(**cfg)
    prompts = vis = None
    encoders: list[nn.Module] = []
    if text_encoder:
        tok_l, tok_g = byte_level_clip_tokenizer(), byte_level_clip_tokenizer(pad_token="!")
        encoders = [CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, **arch)) for tok, arch in ((tok_l, TINY_CLIP_L), (tok_g, TINY_CLIP_G))]
        prompts = SD3Prompts(encoders[0], encoders[1], tok_l, tok_g, int(cfg["joint_attention_dim"]),
                             max_sequence_length=TINY_T5_TOKENS)
    if vision_encoder:
        vis = tiny_vision_encoder()
    freeze(net, vae, vis, *encoders)
    cast(dtype, net, vae, vis, *encoders)
    return Backbone(denoiser=MMDiTDenoiser(net), autoencoder=Autoencoder(vae), parameterisation=FlowMatching(1000, shift),
                    prompts=prompts, vision_encoder=vis, name="tiny_sd3")
