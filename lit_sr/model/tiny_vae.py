"""The tiny ×4 KL VAE of the CPU backbones, trained as an autoencoder on the bundled photos.

A frozen *random* VAE would make super-resolution unlearnable, so the tiny backbones' VAE is
trained on random crops of the bundled training photos (:mod:`lit_sr.photos`; the held-out photos
are never seen). Each recipe — configuration, seed, step count, photo list — has a key, and a
trained VAE is looked up in this order:

1. the package's own ``lit_sr/data/tiny_vae/<key>/`` — the recipes the configs use ship trained
   (``python -m lit_sr.make_tiny_vae`` writes them; a fresh machine trains nothing);
2. ``$LIT_SR_CACHE/tiny_vae/<key>`` — any other recipe, trained once on first use and cached.

``latent_channels`` is 4 for the test backbone (``backbone=tiny``) and 16 for the CPU default
(``tiny16``) and the SD3-shaped one (``tiny_sd3``), as SD3's and FLUX's VAEs have; the latents are
normalised to zero mean (``shift_factor``, 16-channel VAEs only, as SD3's) and unit variance
(``scaling_factor``), as the published VAEs' are.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from lit_sr.photos import TRAIN_PHOTOS, cache_root, photo_array

log = logging.getLogger(__name__)

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


def _augment_colour(crop: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip, and jitter saturation and per-channel gain, so colours beyond the photos' own are seen."""
    if torch.rand(1, generator=gen) < 0.5:
        crop = crop.flip(-1)
    if torch.rand(1, generator=gen) < 0.5:
        gray = crop.mean(0, keepdim=True)
        saturation = 0.6 + 0.8 * float(torch.rand(1, generator=gen))
        crop = (gray + (crop - gray) * saturation) * (0.85 + 0.3 * torch.rand(3, 1, 1, generator=gen))
    return crop.clamp(0, 1)


def pretrain(vae: nn.Module, steps: int, seed: int, crop: int = 32, batch: int = 8, lr: float = 1e-3,
             colour_weight: float = 3.0, progress=None) -> float:
    """Train ``vae`` as an autoencoder on random crops of the bundled training photos; returns the final MSE.

    Colour photos are drawn ``colour_weight`` times as often as grayscale ones (textures, text),
    which would otherwise teach it gray; warm-up then cosine decay, gradient clipping at 1.
    ``progress(step, steps, loss)`` is called after every step.
    """
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
    for step in range(steps):
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
        if progress is not None:
            progress(step + 1, steps, loss_val)
    vae.eval()
    return loss_val


def _normalisation(vae: nn.Module, shift: bool) -> dict[str, float]:
    """Latent shift (mean; 16-channel VAEs) and scale (1/std) over crops of the training photos."""
    with torch.no_grad():
        imgs = [torch.from_numpy(photo_array(n)[:128, :128]).permute(2, 0, 1).float() / 127.5 - 1 for n in TRAIN_PHOTOS]
        z = vae.encode(torch.stack(imgs)).latent_dist.mean
    mean = float(z.mean()) if shift else 0.0
    values = {"scaling_factor": float(1.0 / (z - mean).std().clamp_min(1e-3))}
    if shift:
        values["shift_factor"] = mean
    return values


SHIPPED = Path(__file__).resolve().parents[1] / "data" / "tiny_vae"  # trained recipes shipped with the package


def recipe_key(seed: int = 0, pretrain_steps: int = 1500, latent_channels: int = 4) -> str:
    """The key of one training recipe (the photos it learns from are part of it)."""
    config = dict(TINY_VAE, latent_channels=int(latent_channels))
    return hashlib.sha1(json.dumps([config, seed, pretrain_steps, 3, TRAIN_PHOTOS], sort_keys=True).encode()).hexdigest()[:12]


def train_tiny_vae(seed: int = 0, pretrain_steps: int = 1500, latent_channels: int = 4, progress: bool = True,
                   threads: int | None = None):
    """A new tiny VAE trained by the recipe (on ``threads`` CPU threads, default every core; a progress
    bar on stderr when ``progress``)."""
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    vae = AutoencoderKL(**dict(TINY_VAE, latent_channels=int(latent_channels)))
    if pretrain_steps > 0:
        before = torch.get_num_threads()
        torch.set_num_threads(threads or max(before, os.cpu_count() or 1))  # once per machine: every core
        bar = tqdm(total=pretrain_steps, desc=f"tiny {latent_channels}-channel VAE", unit="step", disable=not progress,
                   mininterval=1.0)
        try:
            with torch.enable_grad():
                pretrain(vae, pretrain_steps, seed,
                         progress=lambda i, n, loss: (bar.update(1), bar.set_postfix(mse=f"{loss:.4f}", refresh=False)))
        finally:
            bar.close()
            torch.set_num_threads(before)
        vae.register_to_config(**_normalisation(vae, shift=latent_channels > 4))
    return vae


def tiny_vae(seed: int = 0, pretrain_steps: int = 1500, latent_channels: int = 4):
    """The tiny ×4 VAE of this recipe: shipped with the package, cached, or trained now and cached."""
    from diffusers import AutoencoderKL

    key = recipe_key(seed, pretrain_steps, latent_channels)
    folder = cache_root() / "tiny_vae" / key
    for place in (SHIPPED / key, folder):
        if (place / "config.json").exists():
            try:
                return AutoencoderKL.from_pretrained(place, local_files_only=True)
            except (OSError, ValueError) as exc:  # a corrupt cache entry is rebuilt, not fatal
                log.warning("cannot load the tiny VAE in %s (%s): training it again", place, str(exc).splitlines()[0])
    log.info("training the tiny %d-channel VAE once on the bundled photos (%d steps); cached in %s",
             latent_channels, pretrain_steps, folder)
    vae = train_tiny_vae(seed, pretrain_steps, latent_channels)
    tmp = folder.with_name(folder.name + f".tmp{torch.randint(1 << 30, (1,)).item()}")
    vae.save_pretrained(tmp)
    try:
        tmp.replace(folder)
    except OSError:  # another rank finished first; use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        return AutoencoderKL.from_pretrained(folder, local_files_only=True)
    return vae
