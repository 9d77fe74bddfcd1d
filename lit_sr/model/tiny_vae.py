"""The tiny ×4 KL VAE of the CPU backbones, trained once as an autoencoder on the bundled photos.

A frozen *random* VAE would make super-resolution unlearnable, so the tiny backbones' VAE is
trained once on random crops of the bundled training photos (:mod:`lit_sr.photos`; the held-out
photos are never seen) and cached under ``$LIT_SR_CACHE/tiny_vae/<key>``, keyed by its
configuration, seed, step count and photo list. ``latent_channels`` is 4 for the SD-shaped tiny
backbone and 16 for the SD3-shaped one; the latents are normalised to zero mean (``shift_factor``,
16-channel VAEs only, as SD3's) and unit variance (``scaling_factor``), as the published VAEs' are.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil

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


def tiny_vae(seed: int = 0, pretrain_steps: int = 1500, latent_channels: int = 4):
    """The tiny ×4 VAE with ``latent_channels`` channels, trained once on the bundled photos and cached."""
    from diffusers import AutoencoderKL

    config = dict(TINY_VAE, latent_channels=int(latent_channels))
    # The photos it learns from are part of the key: a changed training set trains a new VAE.
    key = hashlib.sha1(json.dumps([config, seed, pretrain_steps, 3, TRAIN_PHOTOS], sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_root() / "tiny_vae" / key
    if (folder / "config.json").exists():
        try:
            return AutoencoderKL.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:  # a corrupt cache entry is rebuilt, not fatal
            log.warning("rebuilding tiny VAE cache %s (%s)", folder, str(exc).splitlines()[0])
    torch.manual_seed(seed)
    vae = AutoencoderKL(**config)
    if pretrain_steps > 0:
        log.info("training the tiny %d-channel VAE once on the bundled photos (%d steps); cached in %s",
                 latent_channels, pretrain_steps, folder)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(threads, os.cpu_count() or 1))  # once per machine: use every core
        try:
            with torch.enable_grad():
                pretrain(vae, pretrain_steps, seed)
        finally:
            torch.set_num_threads(threads)
        vae.register_to_config(**_normalisation(vae, shift=latent_channels > 4))
    tmp = folder.with_name(folder.name + f".tmp{torch.randint(1 << 30, (1,)).item()}")
    vae.save_pretrained(tmp)
    try:
        tmp.replace(folder)
    except OSError:  # another rank finished first; use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        return AutoencoderKL.from_pretrained(folder, local_files_only=True)
    return vae
