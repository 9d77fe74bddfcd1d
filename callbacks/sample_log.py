"""Which samples each rank trained on: one JSON line per training batch, per rank (``callbacks=[...,sample_log]``).

``<dirpath>/rank-<r>.jsonl`` gets ``{"epoch", "step", "batch", "draws", "paths"}`` before each
training step (``paths``: the image file, or the shard sample's key). It audits a data path at
scale: each sample drawn once per epoch over all ranks, nothing lost or repeated across a
pre-emption. A resumed run appends; after a hard kill the lines from the last checkpoint on repeat,
and the later line of a (step, batch) pair is the one that counts.
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class SampleLog(L.Callback):
    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch: dict, batch_idx: int) -> None:
        draws = batch.get("draw")
        record = {"epoch": trainer.current_epoch, "step": trainer.global_step, "batch": batch_idx,
                  "draws": draws.tolist() if draws is not None else [], "paths": list(batch.get("path", []))}
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / f"rank-{trainer.global_rank}.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
