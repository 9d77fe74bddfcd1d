"""Rebuild a trained generator from an adapter export folder or a Lightning checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lit_sr.config.build import build_generator
from lit_sr.config.compose import validate
from lit_sr.errors import ConfigError, WeightsError
from lit_sr.model.export import CONFIG_FILE, load_export
from lit_sr.model.generator import OneStepSR


def _apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"bad override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"unknown config key '{key}'")
        OmegaConf.update(cfg, key, OmegaConf.create({"v": value}).v if value else value, merge=False)
    return cfg


def load_config(source: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """The run config stored with an export folder (``config.yaml``) or a checkpoint."""
    path = Path(source)
    if not path.exists():
        raise WeightsError(f"model not found: {path}")
    if path.is_dir():
        if not (path / CONFIG_FILE).exists():
            raise WeightsError(f"{path}: not an adapter export folder (no {CONFIG_FILE})")
        cfg = OmegaConf.load(path / CONFIG_FILE)
    else:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        try:
            cfg = OmegaConf.create(ckpt["hyper_parameters"]["config"])
        except (KeyError, TypeError) as exc:
            raise WeightsError(f"{path}: not a lit_sr checkpoint (no stored config)") from exc
    cfg = _apply_overrides(cfg, list(overrides or []))
    validate(cfg)
    return cfg


def load_generator(source: str | Path, overrides: list[str] | None = None) -> tuple[OneStepSR, DictConfig]:
    """Generator with its trained tensors restored; ``overrides`` e.g. ``backbone.path=/models/sd21``."""
    cfg = load_config(source, overrides)
    generator = build_generator(cfg)
    path = Path(source)
    if path.is_dir():
        load_export(generator, path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        prefix = "generator."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        expected = generator.trainable_state_dict()
        missing = set(expected) - set(sub)
        if missing:
            raise WeightsError(f"{path}: checkpoint lacks {len(missing)} generator tensors, e.g. {sorted(missing)[0]}")
        params = dict(generator.named_parameters())
        with torch.no_grad():
            for k in expected:
                params[k].copy_(sub[k])
    return generator.eval(), cfg
