"""Pins the Lightning internals lit_sr reads (lit_sr/lightning_access.py) on a small real fit."""
from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from lit_sr.lightning_access import batches_done, forget_logged, is_last_batch_of_epoch


class _Model(L.LightningModule):
    def __init__(self, forget: bool) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.forget = forget

    def training_step(self, batch, batch_idx):
        self.log("train/a", float(batch_idx))
        if batch_idx == 0:
            self.log("train/b", 7.0)  # logged once, in the first step only
        elif self.forget:
            forget_logged(self.trainer, lambda name: name != "train/b")
        return (self.w * batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Record(L.Callback):
    def __init__(self) -> None:
        self.rows: list[tuple[int, int, bool]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.append((batch_idx, batches_done(trainer), is_last_batch_of_epoch(trainer)))


def _fit(forget: bool, tmp_path) -> list:
    rec = _Record()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, log_every_n_steps=1, logger=L.pytorch.loggers.CSVLogger(tmp_path),
                        callbacks=[rec], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(_Model(forget), DataLoader(torch.ones(3, 1), batch_size=1))
    return rec.rows


def test_batches_done_last_batch_and_forget_logged(tmp_path):
    kept = _fit(False, tmp_path / "kept")
    # batches_done counts the batches of the current epoch run so far; is_last_batch marks the last one
    assert kept == [(0, 1, False), (1, 2, False), (2, 3, True)] * 2
    assert _logged_b(tmp_path / "kept") == [7.0, 7.0, 7.0]  # without forgetting, Lightning repeats b after step 0
    _fit(True, tmp_path / "forgot")
    assert _logged_b(tmp_path / "forgot")[:1] == [7.0] and len(_logged_b(tmp_path / "forgot")) == 1  # never again


def _logged_b(root) -> list[float]:
    """train/b in the first epoch's rows of the CSV logger (what loggers received at each step)."""
    import csv

    rows = list(csv.DictReader(open(next(root.rglob("metrics.csv")))))
    return [float(r["train/b"]) for r in rows if r.get("train/b") and int(r["step"]) < 3]
