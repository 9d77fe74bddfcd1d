"""RCOD's metric estimation module (MEM): predicts the latent metric M_L = cos(z_L, z_H) from the LQ.

LDG trains each image at the timestep of its similarity group, which needs the HQ latent. At
inference there is no HQ, so a small regressor estimates M_L from the LQ alone and
``knob=adaptive`` maps the estimate through the same grouping (:class:`lit_sr.model.noise.ldg.LDGNoise`).

RCOD's reference code regresses M_L with MSE from the features of a degradation-estimation network
(S3Diff's DEResNet) through one linear layer. Those weights are not available offline, so the
features here are cheap degradation cues of the same kind, all from frozen inputs:

* latent statistics of z_L: per-channel mean, standard deviation and mean absolute spatial
  gradient (3·C values);
* image statistics of the upsampled LQ: mean Sobel magnitude, mean absolute Laplacian (noise /
  high-frequency energy) and the standard deviation of the luminance (3 values).

The features are standardised with running statistics gathered during training (kept with the
weights), then an MLP (Linear–GELU–…–Linear) regresses M_L.

Train one with the ``mem`` experiment (``python train.py experiment=mem
mem.generator_export=runs/x/adapter``): the trained generator's own VAE encoder defines z_L, so
the estimate matches what LDG grouped on in training. The result is one safetensors file;
point ``noise.mem_weights`` at it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lit_sr.errors import WeightsError
from lit_sr.model.image_ops import filter_responses, gray

MEM_FORMAT = "lit_sr_mem"


def mem_features(z_lq: torch.Tensor, lq_up: torch.Tensor) -> torch.Tensor:
    """(B, 3·C + 3) degradation cues of a latent and its image in [-1, 1] (see module docstring)."""
    z = z_lq.float()
    mean = z.mean(dim=(2, 3))
    std = z.std(dim=(2, 3), unbiased=False)
    grad = (z[..., :, 1:] - z[..., :, :-1]).abs().mean(dim=(2, 3)) + (z[..., 1:, :] - z[..., :-1, :]).abs().mean(dim=(2, 3))
    g = gray(lq_up.float() * 0.5 + 0.5)
    resp = filter_responses(g, laplacian=True)
    sobel = (resp[:, 0] + resp[:, 1]).mean(dim=(1, 2))
    lap = resp[:, 2].mean(dim=(1, 2))
    img = torch.stack([sobel, lap, g.flatten(1).std(dim=1, unbiased=False)], dim=1)
    return torch.cat([mean, std, grad, img], dim=1)


class RunningStandardizer(nn.Module):
    """Feature standardisation with statistics accumulated over training (exact running mean/var).

    Unlike BatchNorm it works with any batch size (one included) and its statistics converge to
    those of everything seen, not an exponential average.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(num_features, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(num_features, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():  # Chan et al.'s parallel update of mean and sum of squares
                xb = x.detach().double()
                n_b = float(xb.shape[0])
                mean_b = xb.mean(dim=0)
                m2_b = ((xb - mean_b) ** 2).sum(dim=0)
                n = self.count + n_b
                delta = mean_b - self.mean
                self.mean += delta * (n_b / n)
                self.m2 += m2_b + delta ** 2 * (self.count * n_b / n)
                self.count.copy_(n)
        if self.count == 0:
            return x
        std = (self.m2 / self.count).sqrt().clamp_min(1e-6)
        return (x - self.mean.to(x.dtype)) / std.to(x.dtype)


class MetricEstimator(nn.Module):
    """MLP on frozen LQ features → estimate of M_L = cos(z_L, z_H), shape (B,)."""

    def __init__(self, latent_channels: int = 4, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        if hidden <= 0 or depth < 1:
            raise ValueError(f"mem.estimator needs hidden > 0 and depth >= 1, got {hidden}, {depth}")
        self.latent_channels, self.hidden, self.depth = int(latent_channels), int(hidden), int(depth)
        n_in = 3 * self.latent_channels + 3
        self.norm = RunningStandardizer(n_in)
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(self.depth):
            layers += [nn.Linear(width, self.hidden), nn.GELU()]
            width = self.hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def config(self) -> dict:
        return {"latent_channels": self.latent_channels, "hidden": self.hidden, "depth": self.depth}

    def forward(self, z_lq: torch.Tensor, lq_up: torch.Tensor) -> torch.Tensor:
        if z_lq.shape[1] != self.latent_channels:
            raise ValueError(f"MEM was built for {self.latent_channels} latent channels, got {z_lq.shape[1]}")
        feats = mem_features(z_lq, lq_up)
        return self.mlp(self.norm(feats)).squeeze(1)


def save_mem(estimator: MetricEstimator, path: str | Path) -> Path:
    """One safetensors file: weights, standardisation statistics and the constructor arguments."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in estimator.state_dict().items()}
    save_file(state, str(path), metadata={"format": MEM_FORMAT, "version": "1", "config": json.dumps(estimator.config())})
    return path


def load_mem(path: str | Path) -> MetricEstimator:
    """Rebuild a :class:`MetricEstimator` saved by :func:`save_mem` (eval mode, frozen)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"noise.mem_weights: MEM file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise WeightsError(f"noise.mem_weights: cannot read {path}: {str(exc).splitlines()[0]}") from None
    if meta.get("format") != MEM_FORMAT:
        raise WeightsError(f"noise.mem_weights: {path} is not a MEM file (train one with experiment=mem)")
    estimator = MetricEstimator(**json.loads(meta["config"]))
    try:
        estimator.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"noise.mem_weights: {path} does not match its stored config: {str(exc).splitlines()[0]}") from None
    estimator.requires_grad_(False)
    return estimator.eval()


def generator_latents(generator, lq: torch.Tensor, hq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_L, z_H, x) exactly as :meth:`OneStepSR.step` forms them for LDG.

    x is the upsampled, padded LQ in [-1, 1]; z_L uses the generator's active VAE adapters and
    z_H the encoder the generator's noise strategy names (:meth:`OneStepSR.encode_hq`).
    """
    lq_up = generator.upsample(lq)
    h, w = lq_up.shape[-2:]
    if hq.shape[-2:] != (h, w):
        raise ValueError(f"HQ size {tuple(hq.shape[-2:])} does not match the upsampled LQ {(h, w)}")
    x = generator.model_input(lq_up)
    return generator.encode(x), generator.encode_hq(generator.model_input(hq)), x
