"""A CSV logger that keeps a run's history across resumes.

Lightning's CSV writer deletes ``metrics.csv`` when its folder is not empty, so a resumed run
loses every row before the checkpoint. This writer keeps the file: it reads the existing header,
appends new rows, and when the run resumes from a checkpoint at step ``s`` it first drops the rows
logged at or after ``s`` by the interrupted run (they are logged again), so the file reads as one
uninterrupted run.
"""
from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):  # continue the file: its columns are the known keys
            with open(self.metrics_file_path, newline="") as fh:
                self.metrics_keys = sorted(next(csv.reader(fh), []))

    def drop_from(self, step: int) -> None:
        """Remove rows with ``step >= step`` (an interrupted run's tail after its last checkpoint)."""
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        tmp = f"{self.metrics_file_path}.tmp-{os.getpid()}"
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, self.metrics_file_path)


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives resumes (see the module docstring)."""

    @property
    def experiment(self) -> _KeepingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    def resume_at(self, step: int) -> None:
        """The run continues from a checkpoint at optimizer step ``step``."""
        self.experiment.drop_from(step)
