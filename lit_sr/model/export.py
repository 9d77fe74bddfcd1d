"""The model export: one self-contained folder holding everything a run trained.

An export folder holds

* ``lit_sr_state.safetensors`` — every trained tensor of the model: all denoiser adapters
  (stage-2, endpoint and dual-LoRA ones included), the VAE-encoder LoRA, LQFM, the VPIM MLP —
  what :func:`load_export` (and ``lit_sr.pipeline.LitSRPipeline``) restore exactly. Training-only
  networks (VSD's fake score, a discriminator) stay in the checkpoint;
* ``pytorch_lora_weights.safetensors`` — the primary denoiser adapter in the family's diffusers
  LoRA format (``StableDiffusionPipeline.load_lora_weights(folder)`` loads an SD-2.1 export,
  ``StableDiffusion3Pipeline.load_lora_weights(folder)`` an SD3 one), and ``lora_<name>.safetensors``
  for every named denoiser adapter;
* ``config.yaml`` — the run's composed config, so inference rebuilds the same generator;
* ``lit_sr_export.json`` — a manifest (format version, adapters, modules, knob, endpoints);
* ``README.md`` — a model card: recipe, the knob's meaning and range, how to load, and the
  metrics of the last evaluation.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lit_sr.errors import WeightsError
from lit_sr.model.generator import BACKBONE_PARTS, OneStepSR

STATE_FILE = "lit_sr_state.safetensors"
CONFIG_FILE = "config.yaml"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
MANIFEST_FILE = "lit_sr_export.json"
CARD_FILE = "README.md"
FORMAT_VERSION = 3  # 3: backbone-neutral names (denoiser./vae.net. keys, lora.denoiser); 2 is migrated on load


def denoiser_lora_state(generator: OneStepSR, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name`` of the denoiser with peft's adapter-free key names (diffusers' convention)."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(generator.denoiser.net, adapter_name=name)
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def export_adapter(generator: OneStepSR, out_dir: str | Path, config: dict | None = None,
                   primary: str | None = None, metrics: dict[str, float] | None = None) -> Path:
    """Write the export folder described in the module docstring; returns its path.

    The folder is written next to ``out_dir`` and swapped in only when complete, so a failed
    export (disk full) never leaves a folder mixing old and new files. Non-finite weights (a run
    that diverged) are refused: a NaN adapter is worse than none.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in generator.model_state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"refusing to export non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): "
                           "the run diverged; lower optim.lr or check the data")
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        names = list(generator.denoiser_adapters)
        active = generator.adapters.active["denoiser"]
        primary = primary or (active[0] if active else (names[0] if names else None))
        for name in names:
            meta = generator.denoiser.net.peft_config[name].to_dict()
            meta = json.loads(json.dumps(meta, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
            files = [f"lora_{name}.safetensors"] + ([DIFFUSERS_FILE] if name == primary else [])
            for weight_name in files:
                generator.denoiser.save_lora(tmp, denoiser_lora_state(generator, name), weight_name, meta)
        save_file(state, str(tmp / STATE_FILE), metadata={"format": "lit_sr", "version": str(FORMAT_VERSION)})
        if config is not None:
            (tmp / CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
        manifest = _manifest(generator, state, primary)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        (tmp / CARD_FILE).write_text(model_card(manifest, config or {}, metrics or {}))
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
    with safe_open(str(path), "pt") as fh:
        version = int((fh.metadata() or {}).get("version", FORMAT_VERSION))
    if version < 3:
        state = {_v2_key(k): v for k, v in state.items()}
    expected = generator.model_state_dict()
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


def _v2_key(key: str) -> str:
    """A format-2 tensor name (``unet.…``, ``vae.encoder…``) in today's layout (``denoiser.net.…``, ``vae.net.…``)."""
    if key.startswith("unet."):
        return "denoiser.net." + key[len("unet."):]
    if key.startswith("vae.") and not key.startswith("vae.net."):
        return "vae.net." + key[len("vae."):]
    return key


def _manifest(generator: OneStepSR, state: dict[str, torch.Tensor], primary: str | None) -> dict:
    modules = sorted({k.split(".", 1)[0] for k in state if not k.startswith(BACKBONE_PARTS)})
    return {
        "format": "lit_sr", "version": FORMAT_VERSION, "family": generator.denoiser.family,
        "diffusers_pipeline": generator.denoiser.pipeline_name,
        "parameterisation": generator.parameterisation.state(),
        "denoiser_adapters": list(generator.denoiser_adapters), "vae_adapters": list(generator.vae_adapters),
        "primary_adapter": primary, "modules": modules, "endpoints": generator.endpoint_adapters or None,
        "noise": type(generator.noise).__name__, "knob": generator.noise.knob_help(),
        "knob_values": [v for v in generator.noise.knob_values() if v is not None], "scale": generator.scale,
        "parameters": int(sum(v.numel() for v in state.values())),
    }


def model_card(manifest: dict, config: dict, metrics: dict[str, float]) -> str:
    """The export's README: what was trained, how to steer it, how to load it, how it scored."""
    backbone = config.get("backbone") or {}
    base = backbone.get("path") or f"the built-in tiny backbone ({backbone.get('_target_', '?')})"
    parts = {k: (config.get(k) or {}).get("_target_", "none") for k in ("noise", "conditioning", "modulation")}
    terms = ", ".join(f"{n} (weight {t.get('weight', 1.0)})" for n, t in ((config.get("loss") or {}).get("terms") or {}).items()
                      if t) or "?"
    stages = config.get("stages") or []
    steps = (config.get("trainer") or {}).get("max_steps", "?")
    lines = [
        "# lit_sr model", "",
        f"One-step diffusion super-resolution (×{manifest['scale']}) fine-tuned from {base}.", "",
        "## Recipe", "",
        f"* noise strategy: `{parts['noise']}`; conditioning: `{parts['conditioning']}`; modulation: `{parts['modulation']}`",
        f"* losses: {terms}",
        f"* {len(stages) or 1} training stage(s), {steps} optimizer steps; optimizer lr {(config.get('optim') or {}).get('lr', '?')}",
        f"* backbone: the {manifest['family']} family, {manifest['parameterisation']['kind']} parameterisation",
        f"* trained tensors: {manifest['parameters']:,} parameters — denoiser adapters {manifest['denoiser_adapters']}, "
        f"VAE-encoder adapters {manifest['vae_adapters']}, modules {manifest['modules'] or 'none'}",
        "", "## The fidelity–realism control", "",
        f"* knob: {manifest['knob']}",
    ]
    if manifest["knob_values"]:
        lines.append(f"* the sweep used for curves: {manifest['knob_values']}")
    if manifest["endpoints"]:
        lines.append(f"* γ ∈ [0, 1] blends the fidelity endpoint {manifest['endpoints']['fidelity']} (γ = 0) with the "
                     f"realism endpoint {manifest['endpoints']['realism']} (γ = 1) in image space, at no extra model cost; "
                     "a per-pixel γ map gives region control (`--gamma-map`, or the studio page)")
    lines += [
        "", "## Use", "",
        "```bash",
        "python -m lit_sr.infer --model THIS_FOLDER --input photos/ --output sr/"
        + (" --set backbone.path=/models/your-sd" if backbone.get("path") else ""),
        "python -m lit_sr.studio --model THIS_FOLDER --input photo.png --out page/   # the interactive page",
        "```", "",
        "```python",
        "from lit_sr.pipeline import LitSRPipeline",
        "pipe = LitSRPipeline.from_pretrained(\"THIS_FOLDER\"" + (", base=\"/models/your-sd\")" if backbone.get("path") else ")"),
        "image = pipe(\"photo.png\"" + (", gamma=0.5" if manifest["endpoints"] else "") + ")",
        "```", "",
        f"`{DIFFUSERS_FILE}` (adapter `{manifest['primary_adapter']}`) also loads into diffusers with "
        f"`{manifest['diffusers_pipeline']}.load_lora_weights(THIS_FOLDER)`; "
        "the one-step SR path needs lit_sr.", "",
        "## Last evaluation", "",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---:|"] + [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("No validation ran before the export.")
    return "\n".join(lines) + "\n"
