"""The pretrained pieces a one-step super-resolver is fine-tuned from.

Two sources, one result (:class:`Backbone`):

* :func:`load_backbone` reads a local diffusers-format directory (Stable Diffusion 2.1-base,
  SD-Turbo, ...) with ``local_files_only``; it never reaches a model hub.
* :func:`tiny_backbone` builds a small random-initialised UNet / VAE / CLIP text (and optionally
  vision) encoder offline, for tests and the CPU default. A frozen *random* VAE would make the
  task unlearnable, so the tiny VAE is trained once as an autoencoder on the bundled photos and
  cached (about a minute on 2 cores, once; keyed by its config, seed and photos).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lit_sr.errors import WeightsError
from lit_sr.model.clip_vocab import byte_symbols
from lit_sr.typed import LocalDir

log = logging.getLogger(__name__)

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
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=64,
)
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
)
TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=32,
)
# SD-2.1's noise schedule: scaled-linear betas over 1000 steps.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@dataclass
class Backbone:
    """Frozen pretrained parts plus the facts the generator needs about them."""

    unet: nn.Module
    vae: nn.Module
    alphas_cumprod: torch.Tensor  # (T,) float64 ᾱ_t of the training schedule
    text_encoder: nn.Module | None = None
    tokenizer: object | None = None
    vision_encoder: nn.Module | None = None
    name: str = "custom"

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def cross_attention_dim(self) -> int:
        dim = self.unet.config.cross_attention_dim
        return int(dim if isinstance(dim, int) else dim[0])

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())


def schedule_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
    beta_schedule: str = "scaled_linear",
) -> torch.Tensor:
    """ᾱ_t of a DDPM schedule, computed as diffusers' ``DDPMScheduler`` does (float64 here)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end, beta_schedule=beta_schedule
    )
    return sched.alphas_cumprod.to(torch.float64)


def read_schedule(path: str | None) -> torch.Tensor:
    """ᾱ_t of a diffusers directory's scheduler config (SD-2.1's schedule without a path), read cheaply.

    Lets the noise strategy check its timesteps before the UNet and VAE are loaded.
    """
    if path in (None, "", "???"):
        return schedule_alphas_cumprod(**SD_SCHEDULE)
    file = Path(path).expanduser() / "scheduler" / "scheduler_config.json"
    if not file.is_file():
        raise WeightsError(f"backbone.path: scheduler config not found: {file}")
    sched = json.loads(file.read_text())
    return schedule_alphas_cumprod(sched.get("num_train_timesteps", 1000), sched.get("beta_start", 0.00085),
                                   sched.get("beta_end", 0.012), sched.get("beta_schedule", "scaled_linear"))


def _freeze(*modules: nn.Module | None) -> None:
    for m in modules:
        if m is not None:
            m.requires_grad_(False)
            m.eval()


# ---------------------------------------------------------------------------------------------
# Local diffusers directories
# ---------------------------------------------------------------------------------------------

def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise WeightsError(f"backbone.path: {what} not found: {path}")
    return path


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(set(_DTYPES))}")
    return _DTYPES[name]


def load_backbone(
    path: LocalDir,
    text_encoder: bool = True,
    vision_encoder: LocalDir | None = None,
    dtype: str = "fp32",
) -> Backbone:
    """Load UNet, VAE, schedule and (optionally) CLIP encoders from a local diffusers directory.

    ``vision_encoder`` is a separate local directory of a ``CLIPVisionModel`` (VPIM/MEM only).
    Missing directories or files fail with one line naming them; nothing is downloaded.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel

    if path in (None, "", "???"):
        raise WeightsError("backbone.path is not set: give a local diffusers directory (e.g. backbone.path=/models/sd-2-1-base)")
    root = _require(Path(path).expanduser(), "directory")
    torch_dtype = parse_dtype(dtype)
    for sub in ("unet", "vae", "scheduler"):
        _require(root / sub, f"'{sub}' folder")
    _require(root / "scheduler" / "scheduler_config.json", "scheduler config")
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True, torch_dtype=torch_dtype)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=True, torch_dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"backbone.path: cannot load UNet/VAE from {root}: {str(exc).splitlines()[0]}") from exc
    alphas = read_schedule(str(root))
    te = tok = vis = None
    if text_encoder:
        _require(root / "text_encoder", "'text_encoder' folder")
        _require(root / "tokenizer", "'tokenizer' folder")
        te = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", local_files_only=True, torch_dtype=torch_dtype)
        tok = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True)
    if vision_encoder:
        vroot = Path(vision_encoder).expanduser()
        if not vroot.exists():
            raise WeightsError(f"backbone.vision_encoder: directory not found: {vroot}")
        vis = CLIPVisionModel.from_pretrained(vroot, local_files_only=True, torch_dtype=torch_dtype)
    _freeze(unet, vae, te, vis)
    return Backbone(unet=unet, vae=vae, alphas_cumprod=alphas, text_encoder=te, tokenizer=tok,
                    vision_encoder=vis, name=root.name)


# ---------------------------------------------------------------------------------------------
# Tiny offline backbone
# ---------------------------------------------------------------------------------------------

def byte_level_clip_tokenizer(model_max_length: int = 77):
    """A real ``CLIPTokenizer`` with a byte-level vocabulary and no merges.

    Every UTF-8 byte is one token (plus its end-of-word form), so any text tokenizes offline and
    words split into several tokens, as rare words do with the real 49k-token vocabulary.
    """
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def _cache_dir() -> Path:
    from datamodules.skimage_photos import cache_root

    return cache_root() / "tiny_vae"


def _augment_colour(crop: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip, and jitter saturation and per-channel gain, so colours beyond the photos' own are seen."""
    if torch.rand(1, generator=gen) < 0.5:
        crop = crop.flip(-1)
    if torch.rand(1, generator=gen) < 0.5:
        gray = crop.mean(0, keepdim=True)
        saturation = 0.6 + 0.8 * float(torch.rand(1, generator=gen))
        crop = (gray + (crop - gray) * saturation) * (0.85 + 0.3 * torch.rand(3, 1, 1, generator=gen))
    return crop.clamp(0, 1)


def _pretrain_tiny_vae(vae: nn.Module, steps: int, seed: int, crop: int = 32, batch: int = 8,
                       lr: float = 1e-3, colour_weight: float = 3.0) -> float:
    """Train the tiny VAE as an autoencoder on random crops of the bundled training photos; returns final MSE.

    Colour photos are drawn ``colour_weight`` times as often as grayscale ones (textures, text),
    which would otherwise teach it gray; warm-up then cosine decay, gradient clipping at 1.
    The held-out photos are never seen (``benchmarks/tiny_vae.py`` scores the result on them).
    """
    import math

    from datamodules.skimage_photos import TRAIN_PHOTOS, photo_array

    photos = [torch.from_numpy(photo_array(n)).permute(2, 0, 1).float() / 255.0 for n in TRAIN_PHOTOS]
    weights = torch.tensor([colour_weight if float((p - p.mean(0, keepdim=True)).abs().max()) > 1e-3 else 1.0
                            for p in photos])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr, betas=(0.9, 0.99))
    warm = min(50, steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    vae.train()
    loss_val = float("nan")
    for _ in range(steps):
        crops = []
        for i in torch.multinomial(weights, batch, replacement=True, generator=gen).tolist():
            img = photos[i]
            _, h, w = img.shape
            y = int(torch.randint(h - crop + 1, (1,), generator=gen))
            x = int(torch.randint(w - crop + 1, (1,), generator=gen))
            crops.append(_augment_colour(img[:, y : y + crop, x : x + crop], gen))
        x = torch.stack(crops) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mean).sample  # deterministic AE: sampling noise only slows the short fit
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_val = float(loss.detach())
    vae.eval()
    return loss_val


def tiny_vae(seed: int = 0, pretrain_steps: int = 1500):
    """The tiny ×4 VAE, trained once on the bundled photos and cached on disk."""
    from diffusers import AutoencoderKL

    from datamodules.skimage_photos import TRAIN_PHOTOS

    # The photos it learns from are part of the key: a changed training set trains a new VAE.
    key = hashlib.sha1(json.dumps([TINY_VAE, seed, pretrain_steps, 3, TRAIN_PHOTOS], sort_keys=True).encode()).hexdigest()[:12]
    folder = _cache_dir() / key
    if (folder / "config.json").exists():
        try:
            return AutoencoderKL.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:  # a corrupt cache entry is rebuilt, not fatal
            log.warning("rebuilding tiny VAE cache %s (%s)", folder, str(exc).splitlines()[0])
    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_VAE)
    if pretrain_steps > 0:
        log.info("training the tiny VAE once on the bundled photos (%d steps); cached in %s", pretrain_steps, folder)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(threads, os.cpu_count() or 1))  # once per machine: use every core
        try:
            with torch.enable_grad():
                _pretrain_tiny_vae(vae, pretrain_steps, seed)
        finally:
            torch.set_num_threads(threads)
        # Unit-variance latents, as SD's scaling factor gives for its VAE.
        from datamodules.skimage_photos import TRAIN_PHOTOS, photo_array

        with torch.no_grad():
            imgs = [torch.from_numpy(photo_array(n)[:128, :128]).permute(2, 0, 1).float() / 127.5 - 1 for n in TRAIN_PHOTOS]
            z = vae.encode(torch.stack(imgs)).latent_dist.mean
        vae.register_to_config(scaling_factor=float(1.0 / z.std().clamp_min(1e-3)))
    tmp = folder.with_name(folder.name + f".tmp{torch.randint(1 << 30, (1,)).item()}")
    vae.save_pretrained(tmp)
    try:
        tmp.replace(folder)
    except OSError:  # another rank finished first; use theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return AutoencoderKL.from_pretrained(folder, local_files_only=True)
    return vae


def tiny_backbone(
    seed: int = 0,
    text_encoder: bool = True,
    vision_encoder: bool = False,
    vae_pretrain_steps: int = 1500,
    unet: dict | None = None,
    dtype: str = "fp32",
) -> Backbone:
    """Small random-initialised backbone built offline (seeded, deterministic).

    ``dtype`` is the storage dtype of the frozen weights (as ``load_backbone``'s), so the
    low-precision path runs on the tiny model too.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    vae = tiny_vae(seed, vae_pretrain_steps)
    torch.manual_seed(seed)
    unet_cfg = dict(TINY_UNET, **(unet or {}))
    unet_model = UNet2DConditionModel(**unet_cfg)
    te = tok = vis = None
    if text_encoder:
        tok = byte_level_clip_tokenizer()
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), **ids, **TINY_TEXT))
    if vision_encoder:
        vis = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION))
    _freeze(unet_model, vae, te, vis)
    torch_dtype = parse_dtype(dtype)
    for m in (unet_model, vae, te, vis):
        if m is not None and torch_dtype != torch.float32:
            m.to(torch_dtype)
    return Backbone(unet=unet_model, vae=vae, alphas_cumprod=schedule_alphas_cumprod(**SD_SCHEDULE),
                    text_encoder=te, tokenizer=tok, vision_encoder=vis, name="tiny")
