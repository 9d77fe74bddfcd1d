"""Saves a few validation images at every validation run.

Default: one row per image, ``LQ (bicubic) | SR | HQ``, reusing the SR of the validation step.
With ``knobs`` and/or ``gammas`` the row shows SR at several settings,
``LQ | SR@k1 | SR@k2 | … | HQ``, each panel titled with its setting; endpoint models compute
their two endpoint images once per knob and blend them for every γ.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from datamodules.imageio import save_image
from lit_sr.metrics.sweep import KnobSweep, seeded


class SampleImages(L.Callback):
    """Validation sample grids written to ``out_dir/step<N>/<name>.png``.

    Args:
        out_dir: output folder.
        num_images: the first N validation images.
        knobs: None: the model's default setting only (the validation step's SR, no extra
            passes); a list of knob values; or ``"sweep"`` for the noise strategy's
            ``knob_values()``.
        gammas: blend weights for models with fidelity/realism endpoints (None with ``knobs``
            set: 0, 0.25, …, 1 on such models).
        seed: seed of the noise strategies draw at inference, for the extra passes.
    """

    def __init__(self, out_dir: str | Path, num_images: int = 2, knobs: list | str | None = None,
                 gammas: list[float] | None = None, seed: int | None = 0) -> None:
        if isinstance(knobs, str) and knobs != "sweep":
            raise ValueError(f"knobs must be null, a list of knob values or 'sweep', got {knobs!r}")
        self.out_dir = Path(out_dir)
        self.num_images = int(num_images)
        self.knobs, self.gammas, self.seed = knobs, gammas, seed
        self._sweep: KnobSweep | None = None

    @property
    def renders_settings(self) -> bool:
        return self.knobs is not None or self.gammas is not None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Parse the knobs now, so bad values fail before training."""
        if self.renders_settings and self._sweep is None:
            knobs = [None] if self.knobs is None else self.knobs
            self._sweep = KnobSweep.for_generator(pl_module.generator, knobs, self.gammas)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or batch_idx >= self.num_images:
            return
        hq = batch["hq"][0].float().cpu()
        lq_up = F.interpolate(batch["lq"][:1].float().cpu(), size=hq.shape[-2:], mode="bicubic",
                              align_corners=False)[0].clamp(0, 1)
        name = batch["name"][0] if "name" in batch else str(batch_idx)
        path = self.out_dir / f"step{trainer.global_step:06d}" / f"{name}.png"
        if not self.renders_settings:
            sr = outputs["sr"][0].float().cpu()
            save_image(torch.cat([lq_up, sr, hq], dim=-1), path)
            return
        if self._sweep is None:
            self.setup(trainer, pl_module, "validate")
        assert self._sweep is not None
        with torch.no_grad(), seeded(self.seed, pl_module.device):
            srs = self._sweep.run(pl_module.generator, batch["lq"][:1], _first(batch))
        panels = [lq_up, *(sr[0].float().cpu() for sr in srs), hq]
        titles = ["LQ"] + [_setting_text(p.knob_text, p.gamma) for p in self._sweep.points] + ["HQ"]
        save_image(titled_row(panels, titles), path)


def _setting_text(knob: str, gamma: float | None) -> str:
    # ASCII only: PIL's built-in bitmap font has no Greek letters.
    return f"{knob}" if gamma is None else f"{knob} g={gamma:g}"


def titled_row(panels: list[torch.Tensor], titles: list[str], bar: int = 14) -> torch.Tensor:
    """Panels (3, H, W) side by side under a white bar holding each panel's title."""
    from PIL import Image, ImageDraw, ImageFont

    row = torch.cat(panels, dim=-1)
    width = row.shape[-1]
    header = Image.new("RGB", (width, bar), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    font = ImageFont.load_default()
    x = 0
    for panel, title in zip(panels, titles):
        draw.text((x + 2, 1), title, fill=(0, 0, 0), font=font)
        x += panel.shape[-1]
    head = torch.from_numpy(np.asarray(header, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return torch.cat([head, row], dim=-2)


def _first(batch: dict) -> dict:
    """The per-image entries of a batch's first sample (lists of names, paths, prompts)."""
    return {k: v[:1] for k, v in batch.items() if isinstance(v, (list, tuple, torch.Tensor))}
