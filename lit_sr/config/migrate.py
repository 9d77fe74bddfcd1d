"""Configs stored by earlier versions (export folders, checkpoints), brought to today's keys.

Format 2 (before backbone families) named the denoiser ``unet`` everywhere: ``lora.unet``,
``lora_targets.unet`` and the SD builders in ``lit_sr.model.backbone``. Their meaning is unchanged,
so a stored config is renamed in place; its tensors are renamed by :func:`lit_sr.model.export.load_export`.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

RENAMED_TARGETS = {
    "lit_sr.model.backbone.tiny_backbone": "lit_sr.model.families.sd.tiny_sd",
    "lit_sr.model.backbone.load_backbone": "lit_sr.model.families.sd.load_sd",
}


def upgrade(cfg: DictConfig) -> DictConfig:
    """``cfg`` with format-2 keys renamed (a config of today is returned unchanged)."""
    data = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(data, dict):
        return cfg
    changed = False
    for node in ("lora", "lora_targets"):
        section = data.get(node)
        if isinstance(section, dict) and "unet" in section and "denoiser" not in section:
            section["denoiser"] = section.pop("unet")
            changed = True
    targets = data.get("lora_targets")
    if isinstance(targets, dict) and "cross_attention" not in targets and "denoiser" in targets:
        targets["cross_attention"] = ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]
        changed = True
    backbone = data.get("backbone")
    if isinstance(backbone, dict) and backbone.get("_target_") in RENAMED_TARGETS:
        backbone["_target_"] = RENAMED_TARGETS[backbone["_target_"]]
        changed = True
    if not changed:
        return cfg
    text = OmegaConf.to_yaml(OmegaConf.create(data)).replace("${lora_targets.unet}", "${lora_targets.denoiser}")
    return OmegaConf.create(text)
