"""Writes validation metrics of every validation run to ``metrics.json`` in the run folder."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class MetricsFile(L.Callback):
    """Keeps the history of ``val/*`` metrics; ``first``/``last`` make learning visible at a glance."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.history: list[dict] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row = {"step": int(trainer.global_step)}
        row.update({k[4:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        self.history.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"first": self.history[0], "last": self.history[-1], "history": self.history}
        self.path.write_text(json.dumps(payload, indent=2))

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
