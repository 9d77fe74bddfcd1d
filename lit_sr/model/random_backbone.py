"""Diffusers directories with the published architectures of SD-2.1 / SD-Turbo / SD3 / SD3.5 and random weights.

No weights can be downloaded here, but the architecture is what breaks at real sizes (320-channel
``conv_in``, 1024-wide cross-attention, 8× VAE, 1280-wide CLIP vision tokens). A directory written
by :func:`write_sd_directory` has the layout and the configuration files of the published
model, so ``backbone=sd21 backbone.path=DIR`` loads it through exactly the code that loads real
weights (:func:`lit_sr.model.families.sd.load_sd`), and the same commands then run unchanged
with the real directory.

The configurations below are the published ``config.json`` files of
``stabilityai/stable-diffusion-2-1-base`` and ``stabilityai/sd-turbo`` (same UNet, VAE and
OpenCLIP-H text tower; they differ in the scheduler), of ``stabilityai/stable-diffusion-2-1``
(the 768-v model: v-prediction, 96-latent sample size), of the OpenCLIP ViT-H/14 vision tower
(``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``) for VPIM's ``image_encoder/``, and of
``stabilityai/stable-diffusion-3-medium-diffusers`` / ``stable-diffusion-3.5-medium``
(:func:`write_sd3_directory`: MM-DiT, 16-channel VAE with a shift factor, flow-matching scheduler,
CLIP-L and CLIP-G/14 text towers; the optional T5-XXL is left out, as its tokenizer's
sentencepiece model cannot be had offline, and the folder loads exactly as an SD3 folder without it). ``text_layers`` and
``vision_layers`` make the encoders shallower (full width) for tests; the UNet and VAE are
always full size. The pipeline's ``feature_extractor`` (input of the safety checker, which
one-step SR never runs) is left out.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lit_sr.model.clip_vocab import write_sd2_tokenizer

SD21_UNET = {
    "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False, "use_linear_projection": True,
}
SD21_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 768, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# OpenCLIP ViT-H/14's text tower without its last layer (SD-2 conditions on the penultimate one).
OPENCLIP_H_TEXT = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
    "hidden_act": "gelu", "hidden_size": 1024, "initializer_factor": 1.0, "initializer_range": 0.02,
    "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
    "num_attention_heads": 16, "num_hidden_layers": 23, "pad_token_id": 1, "projection_dim": 512, "vocab_size": 49408,
}
OPENCLIP_H_VISION = {
    "architectures": ["CLIPVisionModel"], "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu",
    "hidden_size": 1280, "image_size": 224, "initializer_factor": 1.0, "initializer_range": 0.02,
    "intermediate_size": 5120, "layer_norm_eps": 1e-05, "model_type": "clip_vision_model", "num_attention_heads": 16,
    "num_channels": 3, "num_hidden_layers": 32, "patch_size": 14, "projection_dim": 1024,
}
_SCALED_LINEAR = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                  "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}


def _arch(diffusers_version: str, scheduler: dict, vae: dict, requires_safety_checker: bool) -> dict:
    return {"diffusers_version": diffusers_version, "scheduler": scheduler, "vae": vae,
            "requires_safety_checker": requires_safety_checker}


ARCHITECTURES: dict[str, dict] = {
    "sd21-base": _arch("0.10.0.dev0", {"_class_name": "PNDMScheduler", **_SCALED_LINEAR}, SD21_VAE, False),
    "sd21-768v": {**_arch("0.10.0.dev0", {"_class_name": "DDIMScheduler", **_SCALED_LINEAR, "clip_sample": False,
                                            "prediction_type": "v_prediction"}, SD21_VAE, False),
                  "unet": {"sample_size": 96}},
    "sd-turbo": _arch(
        "0.24.0.dev0",
        {"_class_name": "EulerDiscreteScheduler", **_SCALED_LINEAR, "interpolation_type": "linear",
         "sample_max_value": 1.0, "sigma_max": None, "sigma_min": None, "timestep_spacing": "trailing",
         "timestep_type": "discrete", "use_karras_sigmas": False},
        {**SD21_VAE, "force_upcast": True, "scaling_factor": 0.18215},
        True,
    ),
}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _check_depth(name: str, value: int, published: int) -> int:
    if not 1 <= int(value) <= published:
        raise ValueError(f"{name} must be in [1, {published}], got {value}")
    return int(value)


def model_fields(cfg: dict) -> dict:
    """A published transformers config.json's fields that the config class takes as arguments
    (without the file-level ``architectures`` / ``model_type`` keys)."""
    return {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}


def write_vision_encoder(out: str | Path, seed: int = 3, layers: int = OPENCLIP_H_VISION["num_hidden_layers"]) -> Path:
    """OpenCLIP ViT-H/14's vision tower (VPIM's and MEM's ``image_encoder/``) with random weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = {**OPENCLIP_H_VISION, "num_hidden_layers": _check_depth("vision_layers", layers, 32)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        CLIPVisionModel(CLIPVisionConfig(**model_fields(cfg))).save_pretrained(out)
    _write_json(Path(out) / "config.json", cfg)
    return Path(out)


def write_sd_directory(
    arch: str,
    out: str | Path,
    bpe: bytes,
    seed: int = 0,
    text_layers: int = OPENCLIP_H_TEXT["num_hidden_layers"],
    image_encoder: bool = False,
    vision_layers: int = OPENCLIP_H_VISION["num_hidden_layers"],
) -> Path:
    """Write ``unet/ vae/ scheduler/ text_encoder/ tokenizer/ model_index.json`` (+ ``image_encoder/``) to ``out``.

    ``bpe`` is the CLIP BPE table (:func:`lit_sr.model.clip_vocab.read_bpe`). Weights are drawn
    from each module's default initialisation under ``seed``. Every config file is the published
    one (with the chosen encoder depths), not the longer one the installed library would write,
    so loading follows the same path as for the real files.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; use one of {sorted(ARCHITECTURES)}")
    spec = ARCHITECTURES[arch]
    text_cfg = {**OPENCLIP_H_TEXT, "num_hidden_layers": _check_depth("text_layers", text_layers, 23)}
    vision_cfg = {**OPENCLIP_H_VISION, "num_hidden_layers": _check_depth("vision_layers", vision_layers, 32)}
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    stamp = {"_diffusers_version": spec["diffusers_version"]}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet_cfg = {**SD21_UNET, **spec.get("unet", {})}
        UNet2DConditionModel(**unet_cfg).save_pretrained(root / "unet")
        _write_json(root / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", **stamp, **unet_cfg})
        torch.manual_seed(seed + 1)
        AutoencoderKL(**spec["vae"]).save_pretrained(root / "vae")
        _write_json(root / "vae" / "config.json", {"_class_name": "AutoencoderKL", **stamp, **spec["vae"]})
        torch.manual_seed(seed + 2)
        CLIPTextModel(CLIPTextConfig(**model_fields(text_cfg))).save_pretrained(root / "text_encoder")
        _write_json(root / "text_encoder" / "config.json", text_cfg)
    if image_encoder:
        write_vision_encoder(root / "image_encoder", seed + 3, vision_cfg["num_hidden_layers"])
    (root / "scheduler").mkdir(exist_ok=True)
    _write_json(root / "scheduler" / "scheduler_config.json", {**spec["scheduler"], **stamp})
    write_sd2_tokenizer(root / "tokenizer", bpe)
    _write_json(root / "model_index.json", {
        "_class_name": "StableDiffusionPipeline", **stamp, "feature_extractor": [None, None],
        "requires_safety_checker": spec["requires_safety_checker"], "safety_checker": [None, None],
        "scheduler": ["diffusers", spec["scheduler"]["_class_name"]], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    return root


# ---------------------------------------------------------------------------------------------
# Stable Diffusion 3 / 3.5 (MM-DiT, flow matching)
# ---------------------------------------------------------------------------------------------

SD3_MEDIUM = {
    "attention_head_dim": 64, "caption_projection_dim": 1536, "in_channels": 16, "joint_attention_dim": 4096,
    "num_attention_heads": 24, "num_layers": 24, "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192, "sample_size": 128,
}
SD35_MEDIUM = {**SD3_MEDIUM, "dual_attention_layers": list(range(13)), "pos_embed_max_size": 384, "qk_norm": "rms_norm"}
SD3_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 16, "latents_mean": None, "latents_std": None,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024, "scaling_factor": 1.5305,
    "shift_factor": 0.0609, "up_block_types": ["UpDecoderBlock2D"] * 4, "use_post_quant_conv": False,
    "use_quant_conv": False,
}
CLIP_L_TEXT = {  # openai/clip-vit-large-patch14's text tower with its projection (SD3's text_encoder/)
    "architectures": ["CLIPTextModelWithProjection"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "model_type": "clip_text_model", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
    "projection_dim": 768, "vocab_size": 49408,
}
CLIP_G_TEXT = {  # laion/CLIP-ViT-bigG-14's text tower with its projection (SD3's text_encoder_2/)
    **CLIP_L_TEXT, "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
    "num_hidden_layers": 32, "projection_dim": 1280,
}
FLOW_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
SD3_ARCHITECTURES = {"sd3-medium": ("0.29.0.dev0", SD3_MEDIUM), "sd35-medium": ("0.31.0.dev0", SD35_MEDIUM)}


def sd3_transformer_config(arch: str, layers: int | None = None) -> dict:
    """The published transformer config, at ``layers`` blocks (full width; dual attention kept where it falls)."""
    cfg = dict(SD3_ARCHITECTURES[arch][1])
    if layers is not None:
        cfg["num_layers"] = _check_depth("layers", layers, cfg["num_layers"])
        if "dual_attention_layers" in cfg:
            cfg["dual_attention_layers"] = [i for i in cfg["dual_attention_layers"] if i < cfg["num_layers"]]
    return cfg


def write_sd3_directory(
    arch: str,
    out: str | Path,
    bpe: bytes,
    seed: int = 0,
    layers: int | None = None,
    text_layers: int | None = None,
) -> Path:
    """Write an SD3-family diffusers folder (``transformer/ vae/ scheduler/ text_encoder/ text_encoder_2/
    tokenizer/ tokenizer_2/ model_index.json``) with the published configurations and random weights.

    ``layers``: MM-DiT blocks (default: the published 24); ``text_layers``: depth of both CLIP towers
    (default: the published 12 / 32). Widths are always the published ones.
    """
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from lit_sr.model.clip_vocab import EOS, write_clip_tokenizer

    if arch not in SD3_ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; use one of {sorted(SD3_ARCHITECTURES)}")
    version, _ = SD3_ARCHITECTURES[arch]
    transformer = sd3_transformer_config(arch, layers)
    texts = {name: {**cfg, "num_hidden_layers": _check_depth("text_layers", text_layers, cfg["num_hidden_layers"])}
             if text_layers is not None else dict(cfg) for name, cfg in (("text_encoder", CLIP_L_TEXT),
                                                                        ("text_encoder_2", CLIP_G_TEXT))}
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    stamp = {"_diffusers_version": version}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        SD3Transformer2DModel(**transformer).save_pretrained(root / "transformer")
        _write_json(root / "transformer" / "config.json", {"_class_name": "SD3Transformer2DModel", **stamp, **transformer})
        torch.manual_seed(seed + 1)
        AutoencoderKL(**SD3_VAE).save_pretrained(root / "vae")
        _write_json(root / "vae" / "config.json", {"_class_name": "AutoencoderKL", **stamp, **SD3_VAE})
        for i, (name, cfg) in enumerate(texts.items()):
            torch.manual_seed(seed + 2 + i)
            CLIPTextModelWithProjection(CLIPTextConfig(**model_fields(cfg))).save_pretrained(root / name)
            _write_json(root / name / "config.json", cfg)
    (root / "scheduler").mkdir(exist_ok=True)
    _write_json(root / "scheduler" / "scheduler_config.json", {**FLOW_SCHEDULER, **stamp})
    write_clip_tokenizer(root / "tokenizer", bpe, pad_token=EOS, name_or_path="openai/clip-vit-large-patch14")
    write_clip_tokenizer(root / "tokenizer_2", bpe, pad_token="!", name_or_path="laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")
    _write_json(root / "model_index.json", {
        "_class_name": "StableDiffusion3Pipeline", **stamp,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "text_encoder_3": [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": [None, None], "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    return root
