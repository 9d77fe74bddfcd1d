"""Saves a few validation images (LQ upsampled | SR | HQ) at every validation run."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from datamodules.imageio import save_image


class SampleImages(L.Callback):
    def __init__(self, out_dir: str | Path, num_images: int = 2) -> None:
        self.out_dir = Path(out_dir)
        self.num_images = int(num_images)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or batch_idx >= self.num_images:
            return
        sr = outputs["sr"][0].float().cpu()
        hq = batch["hq"][0].float().cpu()
        lq_up = F.interpolate(batch["lq"][:1].float().cpu(), size=hq.shape[-2:], mode="bicubic",
                              align_corners=False)[0].clamp(0, 1)
        name = batch["name"][0] if "name" in batch else str(batch_idx)
        grid = torch.cat([lq_up, sr, hq], dim=-1)
        save_image(grid, self.out_dir / f"step{trainer.global_step:06d}" / f"{name}.png")
