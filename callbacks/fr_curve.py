"""Fidelity–realism curve: sweep the knob on the validation set, score, plot, and summarise.

At the end of a validation run (every run, or every N epochs) the generator is run on every
validation image at each knob setting — the noise strategy's t values, the γ blend weights of
endpoint (IFCSR) models, or the grid of both — and a :class:`~lit_sr.metrics.MetricSuite`
scores each setting. Endpoint images are computed once per image and knob and blended for
every γ, so γ values cost no network passes.

Outputs, per run (``<out_dir>/step<N>.{csv,json,png}``, written by rank 0):

* one CSV/JSON row per setting with every metric;
* a plot of the fidelity metric (x) against the realism metric (y), axes oriented so that
  up/right is better, settings labelled at their points;
* scalars ``curve/<metric>@<setting>`` and ``curve/hypervolume`` logged through
  ``pl_module.log`` (so ``ModelCheckpoint(monitor="curve/hypervolume", mode="max")`` can use it),
  the plot as a TensorBoard image and the table as TensorBoard text.

The hypervolume is defined in :mod:`lit_sr.metrics.hypervolume`. Config:
``conf/callbacks/fr_curve.yaml``; documentation: ``docs/evaluation.md``.
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lit_sr.errors import ConfigError
from lit_sr.metrics.hypervolume import curve_hypervolume
from lit_sr.metrics.niqe import size_problem as niqe_size_problem
from lit_sr.metrics.suite import METRIC_NAMES, MetricSuite, MetricWeights
from lit_sr.metrics.sweep import KnobSweep, SweepPoint, SweepScores, seeded
from lit_sr.metrics.table import Table
from lit_sr.metrics.trend import Trend, sweep_trends, trend_lines
from lit_sr.model.facts import Checked, RunFacts

log = logging.getLogger(__name__)

# Reference point of the hypervolume, per metric, in the metric's own units: values no model
# worth comparing is worse than. Fixed (not data-dependent) so hypervolumes are comparable
# across validation runs and across runs.
DEFAULT_REFERENCE: dict[str, float] = {
    "psnr": 10.0, "ssim": 0.0, "lpips": 1.0, "dists": 1.0, "niqe": 20.0, "musiq": 0.0, "maniqa": 0.0, "clipiqa": 0.0,
}


class FidelityRealismCurve(Checked, L.Callback):
    """Knob sweep on the validation set with a fidelity–realism plot and its hypervolume.

    Args:
        out_dir: folder for ``step<N>.csv/json/png`` and ``history.json``.
        without_control: ``error`` (a model with no knob and no endpoints is refused at compose) or
            ``skip`` (one warning, no curve; the default's setting, so ``noise=uniform`` still composes).
        latest: path stem (e.g. ``runs/default/curve``) where the newest curve's PNG and CSV are also copied.
        every_n_epochs: run at the first validation of every N-th epoch (None: every validation).
        knobs: knob values (parsed by the noise strategy); None: the strategy's default sweep
            (``noise.knob_values()``).
        gammas: γ values for models with fidelity/realism endpoints; None: 0, 0.25, …, 1 on such
            models, nothing on others.
        metrics: metrics to compute per setting (the two curve metrics are always included).
        fidelity / realism: the curve's x and y metrics (e.g. ``psnr`` and ``niqe``).
        reference: hypervolume reference ``[fidelity, realism]`` in the metrics' units
            (default: :data:`DEFAULT_REFERENCE`).
        max_images: score only the first N validation images (None: all).
        seed: seed of the noise strategies draw at inference, so runs see the same noise.
        crop_border, y_channel, weights: as :class:`MetricSuite` (``weights``: :class:`MetricWeights`).
    """

    def __init__(
        self,
        out_dir: str | Path,
        every_n_epochs: int | None = None,
        knobs: list | str | None = None,
        gammas: list[float] | None = None,
        metrics: list[str] | None = None,
        fidelity: str = "psnr",
        realism: str = "niqe",
        reference: list[float] | None = None,
        max_images: int | None = None,
        seed: int | None = 0,
        crop_border: int | None = None,
        y_channel: bool = True,
        weights: MetricWeights | None = None,
        latest: str | Path | None = None,
        without_control: str = "error",
    ) -> None:
        for key, name in (("fidelity", fidelity), ("realism", realism)):
            if name not in METRIC_NAMES:
                raise ValueError(f"{key}={name!r} is not a metric; choose from {', '.join(METRIC_NAMES)}")
        if fidelity == realism:
            raise ValueError(f"fidelity and realism must be two different metrics, got {fidelity!r} twice")
        if every_n_epochs is not None and int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1 or null, got {every_n_epochs}")
        if max_images is not None and int(max_images) < 1:
            raise ValueError(f"max_images must be >= 1 or null, got {max_images}")
        if reference is not None and len(reference) != 2:
            raise ValueError(f"reference must be [fidelity, realism], got {reference}")
        self.out_dir = Path(out_dir)
        if without_control not in ("error", "skip"):
            raise ValueError(f"without_control must be 'error' or 'skip', got {without_control!r}")
        self.without_control = without_control  # a model with no knob and no endpoints: refuse, or skip the curve
        self.disabled = False
        self.latest = Path(latest) if latest is not None else None  # <latest>.{png,csv}: copies of the newest curve
        self.every_n_epochs = None if every_n_epochs is None else int(every_n_epochs)
        self.knobs, self.gammas = knobs, gammas
        self.metric_names = list(dict.fromkeys([fidelity, realism, *(metrics or [])]))
        self.fidelity, self.realism = fidelity, realism
        self.reference = [float(v) for v in reference] if reference is not None else [
            DEFAULT_REFERENCE[fidelity], DEFAULT_REFERENCE[realism]]
        self.max_images = max_images
        self.seed = seed
        self.suite_kwargs = dict(crop_border=crop_border, y_channel=y_channel, weights=weights)
        self.suite: MetricSuite | None = None
        self.sweep: KnobSweep | None = None
        self.history: list[dict] = []
        self._last_epoch: int | None = None

    @classmethod
    def requires(cls, node, facts: RunFacts) -> str | None:
        if not facts.noise_has_knob and not facts.endpoints:
            if node.get("without_control", "error") == "skip":
                return None  # setup() says so in one line
            return ("callbacks.fr_curve sweeps a fidelity-realism control, and this model has none: use a noise "
                    "strategy with a knob (noise=rgpa or noise=ldg) or fidelity/realism endpoints (model.endpoints), "
                    "or leave the curve out (callbacks=default)")
        if not facts.has_val:
            return "callbacks.fr_curve runs on the validation set: val must not be null"
        if "niqe" in {*(node.get("metrics") or []), node.get("fidelity"), node.get("realism")}:
            problem = niqe_size_problem(facts.val_crop)
            if problem:
                return f"callbacks.fr_curve: {problem} (or another realism metric: callbacks.fr_curve.realism=...)"
        return None

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Build the suite and parse the knobs now, so bad settings fail before training."""
        if self.suite is not None or self.disabled:
            return
        generator = pl_module.generator
        if self.without_control == "skip" and not generator.noise.has_knob and not generator.has_endpoints:
            self.disabled = True
            log.warning("fr_curve: this model has no fidelity-realism control (noise=%s, no endpoints): no curve "
                        "is drawn", type(generator.noise).__name__)
            return
        self.sweep = KnobSweep.for_generator(generator, self.knobs, self.gammas)
        self.suite = MetricSuite(self.metric_names, scale=generator.scale, **self.suite_kwargs).eval()
        for key in ("fidelity", "realism"):
            name = getattr(self, key)
            if name in self.suite.unavailable:
                raise ConfigError(f"fr_curve {key} metric unavailable: {self.suite.unavailable[name]}")

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if self.every_n_epochs is None:
            return True
        epoch = trainer.current_epoch
        return (epoch + 1) % self.every_n_epochs == 0 and self._last_epoch != epoch

    # ------------------------------------------------------------------ the sweep
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        self._last_epoch = trainer.current_epoch
        if self.suite is None:
            self.setup(trainer, pl_module, "validate")
        if self.disabled:
            return
        assert self.suite is not None and self.sweep is not None
        rows = self.measure(trainer, pl_module)
        points = self.sweep.points
        hv = self.hypervolume(rows)
        for point, row in zip(points, rows):
            for name, value in row.items():
                pl_module.log(f"curve/{name}@{point.label}", value, sync_dist=True)  # equal on every rank
        if hv is not None:
            pl_module.log("curve/hypervolume", hv, sync_dist=True)
        trends = sweep_trends(points, rows, [n for n in METRIC_NAMES if n in self.suite.names])
        for trend in trends:
            if trend.spearman is not None and "(" not in trend.axis:  # one line per metric on a 1-D sweep
                pl_module.log(f"curve/spearman_{trend.metric}", trend.spearman, sync_dist=True)
        if trainer.is_global_zero:
            for line in trend_lines(trends, self.suite.display_names):
                log.info("fr_curve step %d: %s", trainer.global_step, line)
        if trainer.is_global_zero:
            self.write(trainer, points, rows, hv, trends)

    def _batches(self, trainer: L.Trainer) -> Iterable[dict]:
        loaders = trainer.val_dataloaders
        if loaders is None:
            return []
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        return (batch for loader in loaders for batch in loader)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[dict[str, float]]:
        """Mean of every metric per sweep point over the validation images (all ranks)."""
        assert self.suite is not None and self.sweep is not None
        generator, device = pl_module.generator, pl_module.device
        self.suite.to(device)
        scores = SweepScores(self.suite, len(self.sweep.points))
        seen = 0
        was_training = generator.training
        generator.eval()
        try:
            with torch.no_grad(), seeded(self.seed, device):
                for batch in self._batches(trainer):
                    if self.max_images is not None and seen >= self.max_images:
                        break
                    lq = batch["lq"].to(device)
                    hq = batch["hq"].to(device) if "hq" in batch else None
                    name = str(batch["name"][0]) if "name" in batch else f"image {seen}"
                    for i, sr in enumerate(self.sweep.run(generator, lq, batch)):
                        scores.add(i, sr.float(), hq, name)
                    seen += lq.shape[0]
        finally:
            generator.train(was_training)
        if trainer.world_size > 1:
            return scores.means(lambda t: trainer.strategy.reduce(t.to(device), reduce_op="sum"))
        return scores.means()

    def hypervolume(self, rows: Sequence[dict[str, float]]) -> float | None:
        """Hypervolume of the settings that have both curve metrics (None if none has)."""
        pairs = [(r[self.fidelity], r[self.realism]) for r in rows if self.fidelity in r and self.realism in r]
        if not pairs:
            log.warning("fr_curve: no setting has both %s and %s; no hypervolume", self.fidelity, self.realism)
            return None
        hib = self._higher_is_better()
        outside = [p for p in pairs if not _better(p[0], self.reference[0], hib[0]) or not _better(p[1], self.reference[1], hib[1])]
        if outside:
            log.warning("fr_curve: %d of %d settings are not better than the reference %s in both metrics and add "
                        "nothing to the hypervolume (set reference: [fidelity, realism])",
                        len(outside), len(pairs), self.reference)
        return curve_hypervolume([p[0] for p in pairs], [p[1] for p in pairs], self.reference, hib)

    def _higher_is_better(self) -> tuple[bool, bool]:
        assert self.suite is not None
        hib = self.suite.higher_is_better
        return hib[self.fidelity], hib[self.realism]

    # ------------------------------------------------------------------ outputs
    def write(self, trainer: L.Trainer, points: list[SweepPoint], rows: list[dict[str, float]], hv: float | None,
              trends: list[Trend] = ()) -> None:
        assert self.suite is not None
        step, epoch = int(trainer.global_step), int(trainer.current_epoch)
        stem = self.out_dir / f"step{step:06d}"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        names = [n for n in METRIC_NAMES if n in self.suite.names]
        with open(stem.with_suffix(".csv"), "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["step", "epoch", "knob", "gamma", "label", *names])
            for p, row in zip(points, rows):
                writer.writerow([step, epoch, p.knob_text, "" if p.gamma is None else p.gamma, p.label,
                                 *[repr(row[n]) if n in row else "" for n in names]])
        payload = {
            "step": step, "epoch": epoch, "fidelity": self.fidelity, "realism": self.realism,
            "higher_is_better": self.suite.higher_is_better, "reference": self.reference, "hypervolume": hv,
            "unavailable": self.suite.unavailable,
            "points": [{"knob": p.knob, "gamma": p.gamma, "label": p.label, "metrics": row} for p, row in zip(points, rows)],
            "trends": [{"axis": t.axis, "metric": t.metric, "spearman": t.spearman, "non_monotone": t.against}
                       for t in trends],
        }
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        image = plot_curve(points, rows, self.fidelity, self.realism, self.suite.display_names,
                           self._higher_is_better(), title=_title(step, hv, self.reference, self.suite.display_names,
                                                                  self.fidelity, self.realism),
                           path=stem.with_suffix(".png"))
        if self.latest is not None:
            self.latest.parent.mkdir(parents=True, exist_ok=True)
            for suffix in (".png", ".csv"):
                shutil.copyfile(stem.with_suffix(suffix), self.latest.with_suffix(suffix))
        self.history.append({"step": step, "epoch": epoch, "hypervolume": hv})
        (self.out_dir / "history.json").write_text(json.dumps(self.history, indent=2), encoding="utf-8")
        table = Table(title=f"fidelity-realism sweep, step {step}", key_columns=["setting"], metrics=names,
                      display=self.suite.display_names, rows=[([p.label], r) for p, r in zip(points, rows)],
                      unavailable=self.suite.unavailable, notes=trend_lines(trends, self.suite.display_names))
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("curve/plot", image, step, dataformats="HWC")
                logger.experiment.add_text("curve/table", table.markdown(), step)

    def state_dict(self) -> dict:
        return {"history": self.history, "last_epoch": self._last_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self._last_epoch = state_dict.get("last_epoch")


def _better(value: float, reference: float, higher_is_better: bool) -> bool:
    return value > reference if higher_is_better else value < reference


def _title(step: int, hv: float | None, reference: list[float], display: dict[str, str], fid: str, real: str) -> str:
    hv_text = "n/a" if hv is None else f"{hv:.4g}"
    return (f"step {step}: hypervolume {hv_text} "
            f"(reference {display.get(fid, fid)} {reference[0]:g}, {display.get(real, real)} {reference[1]:g})")


def plot_curve(
    points: Sequence[SweepPoint],
    rows: Sequence[dict[str, float]],
    fidelity: str,
    realism: str,
    display: dict[str, str],
    higher_is_better: tuple[bool, bool],
    title: str = "",
    path: str | Path | None = None,
) -> np.ndarray:
    """Draw the curve (fidelity on x, realism on y, better = up/right); returns an (H, W, 3) uint8 image.

    Points sharing a knob (the γ values of one t) are joined by one line; each point is
    labelled with its setting. Written to ``path`` as PNG when given. Uses matplotlib's Agg
    canvas directly, so no GUI backend and no global pyplot state is involved.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    series: dict[str, list[tuple[float, float, str]]] = {}
    for p, row in zip(points, rows):
        if fidelity not in row or realism not in row:
            continue
        key = p.knob_text if p.gamma is not None else ""
        text = f"γ={p.gamma:g}" if p.gamma is not None else p.knob_text
        series.setdefault(key, []).append((row[fidelity], row[realism], text))
    for key, pts in series.items():
        xs, ys, texts = zip(*pts)
        ax.plot(xs, ys, "o-", label=f"knob {key}" if key else None)
        for x, y, text in pts:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if any(series):
        ax.legend(fontsize=8)
    # Orient both axes so that up and right are better, whatever each metric's direction.
    if not higher_is_better[0]:
        ax.invert_xaxis()
    if not higher_is_better[1]:
        ax.invert_yaxis()
    ax.set_xlabel(f"{display.get(fidelity, fidelity)} (fidelity)")
    ax.set_ylabel(f"{display.get(realism, realism)} (realism)")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        fig.savefig(str(path), format="png")
    return image
