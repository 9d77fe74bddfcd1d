"""Noise-strategy settings derived from the training data, computed once before the first step.

LDG with ``m_min/m_max: auto`` or ``grouping: quantile`` needs the distribution of its latent
metric M_L over the training data. :func:`calibrate_noise` runs the generator's encoders over the
datamodule's calibration batches (its first training draws, degraded as in training), gathers the
values of every rank, hands them to the strategy's ``calibrate`` and returns the derived settings.
The values are cached under ``<cache>/calibration/`` keyed by the data signature (files, crops,
seeds) and the config parts the encoders depend on, so a second run on the same data skips the pass.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import torch

from lit_sr.errors import ConfigError
from lit_sr.systems.checkpoint_io import atomic_write
from lit_sr.systems.distributed import gather_objects

log = logging.getLogger(__name__)


def _cache_dir():
    from datamodules.skimage_photos import cache_root

    return cache_root() / "calibration"


def _key(data_signature: str, config: dict) -> str:
    noise = dict(config.get("noise") or {})
    parts = {"data": data_signature, "backbone": config.get("backbone"), "degradation": config.get("degradation"),
             "scale": (config.get("model") or {}).get("scale"), "noise_target": noise.get("_target_"),
             "hq_encoder": noise.get("hq_encoder"), "vae_sample": (config.get("model") or {}).get("vae_sample")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _batch_to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def calibration_metrics(system: Any) -> torch.Tensor:
    """The strategy's calibration metric for the datamodule's calibration samples, all ranks together."""
    from lit_sr.model.mem import generator_latents

    noise, trainer = system.generator.noise, system.trainer
    datamodule = trainer.datamodule
    if datamodule is None or not hasattr(datamodule, "calibration_batches"):
        raise ConfigError("noise settings taken from the training data (e.g. noise.m_min=auto) need a datamodule "
                          "with calibration_batches (datamodules.sr_datamodule.SRDataModule)")
    loader, signature = datamodule.calibration_batches(noise.calibration_samples)
    path = _cache_dir() / f"{_key(signature, system.config)}.json"
    if path.is_file():  # checked by every rank before any rank can write it: all take the same branch
        values = json.loads(path.read_text())["values"]
        log.info("noise calibration: %d cached training-sample values (%s)", len(values), path.name)
        return torch.tensor(values, dtype=torch.float64)
    mine: list[float] = []
    with torch.no_grad(), trainer.strategy.precision_plugin.forward_context():
        for batch in loader:
            batch = datamodule.on_after_batch_transfer(_batch_to(batch, system.device), 0)
            z_lq, z_hq, _ = generator_latents(system.generator, batch["lq"], batch["hq"])
            mine.extend(float(v) for v in noise.calibration_metric(z_lq, z_hq))
    values = [v for part in gather_objects(mine, trainer.world_size) for v in part]
    if trainer.is_global_zero:
        atomic_write(path, lambda fh: fh.write(json.dumps({"values": values}).encode()))
    return torch.tensor(values, dtype=torch.float64)


def calibrate_noise(system: Any) -> dict[str, Any]:
    """Calibrate the generator's noise strategy on the training data; the derived settings."""
    noise = system.generator.noise
    metrics = calibration_metrics(system)
    values = noise.calibrate(metrics)
    q = torch.quantile(metrics, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)).tolist()
    edges = getattr(noise, "group_edges", lambda: [])()
    log.info("noise calibration over %d training samples: metric min %.4f, median %.4f, max %.4f -> %s%s",
             metrics.numel(), *q, ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()),
             f" (group edges {', '.join(f'{e:.4f}' for e in edges)})" if edges and "edges" not in values else "")
    return values


def _fmt(value: Any) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in value) + "]" if isinstance(value, list) else f"{value:.4f}"
