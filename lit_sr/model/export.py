"""Adapter export: trained LoRA as safetensors in the peft/diffusers format, plus our full state.

An export folder holds

* ``pytorch_lora_weights.safetensors`` — the UNet LoRA of the primary adapter in diffusers'
  format (``StableDiffusionPipeline.load_lora_weights(folder)`` loads it);
* ``lora_<name>.safetensors`` — the same for every named UNet adapter;
* ``lit_sr_state.safetensors`` — every trained tensor of the generator (UNet and VAE-encoder
  LoRA, modulation, conditioner MLPs), which :func:`load_export` restores exactly;
* ``config.yaml`` — the run's composed config, so inference rebuilds the same generator.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from lit_sr.errors import WeightsError
from lit_sr.model.generator import OneStepSR

STATE_FILE = "lit_sr_state.safetensors"
CONFIG_FILE = "config.yaml"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


def unet_lora_state(generator: OneStepSR, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name`` of the UNet with peft's adapter-free key names (diffusers' convention)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(generator.unet, adapter_name=name).items()}


def export_adapter(generator: OneStepSR, out_dir: str | Path, config: dict | None = None,
                   primary: str | None = None) -> Path:
    """Write the export folder described in the module docstring; returns its path.

    The folder is written next to ``out_dir`` and swapped in only when complete, so a failed
    export (disk full) never leaves a folder mixing old and new files. Non-finite weights (a run
    that diverged) are refused: a NaN adapter is worse than none.
    """
    from diffusers import StableDiffusionPipeline

    state = {k: v.detach().cpu().contiguous() for k, v in generator.trainable_state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"refusing to export non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): "
                           "the run diverged; lower optim.lr or check the data")
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        names = list(generator.unet_adapters)
        active = generator.adapters.active["unet"]
        primary = primary or (active[0] if active else (names[0] if names else None))
        for name in names:
            meta = generator.unet.peft_config[name].to_dict()
            meta = json.loads(json.dumps(meta, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
            files = [f"lora_{name}.safetensors"] + ([DIFFUSERS_FILE] if name == primary else [])
            for weight_name in files:
                StableDiffusionPipeline.save_lora_weights(
                    tmp, unet_lora_layers=unet_lora_state(generator, name), weight_name=weight_name,
                    safe_serialization=True, unet_lora_adapter_metadata=meta,
                )
        save_file(state, str(tmp / STATE_FILE), metadata={"format": "lit_sr", "version": "1"})
        if config is not None:
            (tmp / CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_in(new: Path, target: Path) -> None:
    """Replace folder ``target`` by the complete folder ``new`` (the old one is removed afterwards)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def load_export(generator: OneStepSR, folder: str | Path) -> None:
    """Restore ``lit_sr_state.safetensors`` into a generator built from the same config."""
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise WeightsError(f"adapter export not found: {path}")
    state = load_file(str(path))
    expected = generator.trainable_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise WeightsError(f"{path}: does not match this model configuration ({what}; "
                           f"{len(missing)} missing, {len(unexpected)} unexpected)")
    params = dict(generator.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            if params[k].shape != v.shape:
                raise WeightsError(f"{path}: {k} has shape {tuple(v.shape)}, model expects {tuple(params[k].shape)}")
            params[k].copy_(v.to(params[k].dtype))
