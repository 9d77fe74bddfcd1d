"""Fidelity–realism curve: hypervolume math, knob/γ sweeps, the callback's files and logged values, real runs."""
from __future__ import annotations

import csv
import itertools
import json
import random
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from callbacks.fr_curve import FidelityRealismCurve
from callbacks.sample_images import SampleImages
from lit_sr.errors import ConfigError
from lit_sr.metrics.hypervolume import curve_hypervolume, hypervolume_2d, pareto_front, to_maximization
from lit_sr.metrics.suite import MetricWeights
from lit_sr.metrics.sweep import KnobSweep
from lit_sr.model.blend import blend
from lit_sr.model.noise.base import NoiseContext, NoiseStrategy

# ------------------------------------------------------------------------------ hypervolume

def test_hypervolume_of_a_staircase_is_the_union_of_rectangles():
    assert hypervolume_2d([], (0, 0)) == 0.0
    assert hypervolume_2d([(3, 2)], (0, 0)) == 6.0
    stairs = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume_2d(stairs, (0, 0)) == 6.0  # 3·1 + 2·1 + 1·1
    assert hypervolume_2d(stairs, (1.5, 0)) == 2.0  # (1, 3) is left of the reference
    assert hypervolume_2d(stairs, (0, 1)) == 3.0  # (3, 1) lies on the reference line
    assert hypervolume_2d(list(reversed(stairs)) + [(1, 1), (2, 2)], (0, 0)) == 6.0  # order, dominated, repeats


def test_dominated_curve_has_smaller_hypervolume():
    front = [(20.0, -8.0), (22.0, -9.0), (24.0, -11.0)]
    worse = [(x - 0.5, y - 0.5) for x, y in front]
    ref = (10.0, -20.0)
    assert hypervolume_2d(worse, ref) < hypervolume_2d(front, ref)
    # A dominated point adds nothing; a point outside the front adds its new area exactly.
    assert hypervolume_2d(front + worse, ref) == hypervolume_2d(front, ref)
    assert hypervolume_2d(front, ref) == 14 * 9 + 12 * 2 + 10 * 1
    assert hypervolume_2d(front + [(23.0, -10.0)], ref) == hypervolume_2d(front, ref) + 1.0  # the cell [22, 23] x [-11, -10]


def test_hypervolume_equals_counted_unit_cells_on_random_integer_sets():
    rng = random.Random(0)
    for _ in range(30):
        pts = [(rng.randint(-3, 8), rng.randint(-3, 8)) for _ in range(rng.randint(1, 7))]
        ref = (rng.randint(-4, 2), rng.randint(-4, 2))
        cells = sum(
            1 for cx, cy in itertools.product(range(ref[0], 9), range(ref[1], 9))
            if any(cx + 1 <= x and cy + 1 <= y for x, y in pts)
        )
        assert hypervolume_2d(pts, ref) == cells
        front = [pts[i] for i in pareto_front(pts)]
        assert hypervolume_2d(front, ref) == cells  # only the Pareto front matters


def test_curve_hypervolume_orients_lower_is_better_metrics():
    # PSNR↑ and NIQE↓ with reference PSNR 10, NIQE 20: points (22, 7) and (20, 5).
    hv = curve_hypervolume([20.0, 22.0], [5.0, 7.0], reference=[10.0, 20.0], higher_is_better=(True, False))
    assert hv == pytest.approx(12 * 13 + 10 * 2)
    assert to_maximization([(1, 2)], (False, True)) == [(-1.0, 2.0)]
    assert pareto_front([(1, 1), (2, 2), (0, 3), (2, 2)]) == [1, 2, 3]
    with pytest.raises(ValueError, match="reference"):
        hypervolume_2d([(1, 1)], (0, float("nan")))


# ------------------------------------------------------------------------------ a strategy with a knob

class TimestepKnob(NoiseStrategy):
    """Test strategy: the knob is the timestep; the UNet sees the clean latent (as uniform)."""

    def parse_knob(self, knob):
        t = 999 if knob is None else int(knob)
        if not 0 <= t < 1000:
            raise ValueError(f"knob {knob} outside [0, 1000)")
        return t

    def knob_values(self) -> list:
        return [999, 500]

    def timesteps(self, ctx: NoiseContext) -> torch.Tensor:
        return self.full_timesteps(self.parse_knob(ctx.knob), ctx.z_lq)

    def denoiser_input(self, ctx, t):
        return ctx.z_lq



def _val_loader(n: int = 2, size: int = 8, scale: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        hq = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(size * scale,) * 2, mode="bilinear",
                           align_corners=False)[0]
        lq = F.interpolate(hq[None], scale_factor=1 / scale, mode="area")[0]
        items.append({"lq": lq, "hq": hq, "name": f"img{i}"})
    return DataLoader(items, batch_size=1)


def _trainer(tmp_path, callbacks, logger=False) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=callbacks, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)


# ------------------------------------------------------------------------------ the callback, tiny backbone

def test_curve_callback_on_tiny_model_writes_one_row_per_knob(tmp_path, make_cfg, tiny_bb):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lit_sr.config.build import build_generator
    from lit_sr.config.systems import build_system

    cfg = make_cfg("val.metrics=[psnr]")
    generator = build_generator(cfg, tiny_bb)
    generator.noise = TimestepKnob()
    generator.noise.attach(tiny_bb.parameterisation)
    system = build_system(cfg, generator)
    curve = FidelityRealismCurve(tmp_path / "curves", metrics=["ssim"], fidelity="psnr", realism="lpips",
                                 reference=[0.0, 1.0], weights=MetricWeights(allow_random=True))
    samples = SampleImages(tmp_path / "samples", num_images=1, knobs="sweep")
    plain = SampleImages(tmp_path / "plain", num_images=1)
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    trainer = _trainer(tmp_path, [curve, samples, plain], logger)
    trainer.validate(system, dataloaders=_val_loader(), verbose=False)

    with open(tmp_path / "curves" / "step000000.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["knob"] for r in rows] == ["999", "500"]  # the strategy's knob_values(), one row each
    assert list(rows[0])[:5] == ["step", "epoch", "knob", "gamma", "label"]
    assert {"psnr", "ssim", "lpips"} <= set(rows[0])
    psnr = [float(r["psnr"]) for r in rows]
    assert psnr[0] != psnr[1]  # the knob reached the generator

    payload = json.loads((tmp_path / "curves" / "step000000.json").read_text())
    expected = curve_hypervolume(psnr, [float(r["lpips"]) for r in rows], [0.0, 1.0], (True, False))
    assert payload["hypervolume"] == pytest.approx(expected)
    assert expected > 0
    metrics = trainer.callback_metrics  # what ModelCheckpoint(monitor=...) reads
    assert float(metrics["curve/hypervolume"]) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["curve/psnr@500"]) == pytest.approx(psnr[1], rel=1e-6)
    trend = next(t for t in payload["trends"] if t["metric"] == "psnr")  # knobs 999, 500: psnr[0] at the larger t
    assert trend["axis"] == "t" and trend["spearman"] == (1.0 if psnr[0] > psnr[1] else -1.0)
    assert float(metrics["curve/spearman_psnr"]) == trend["spearman"] and trend["non_monotone"] == []
    with Image.open(tmp_path / "curves" / "step000000.png") as png:
        assert png.format == "PNG" and png.size[0] > 100
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert "curve/plot" in events.Tags()["images"]

    # Sample rows: LQ | SR@999 | SR@500 | HQ under a title bar; the default stays LQ | SR | HQ.
    with Image.open(tmp_path / "samples" / "step000000" / "img0.png") as im:
        assert im.size == (4 * 32, 32 + 14)
    with Image.open(tmp_path / "plain" / "step000000" / "img0.png") as im:
        assert im.size == (3 * 32, 32)


# ------------------------------------------------------------------------------ γ grids on a stub endpoint model

class StubEndpoints(nn.Module):
    """Endpoint 'model' without a network: x_fid = bicubic LQ, x_real = a knob-dependent brightening."""

    scale = 4
    has_endpoints = True

    def __init__(self) -> None:
        super().__init__()
        self.noise = TimestepKnob()
        self.endpoint_calls = 0
        self.forward_calls = 0

    def _pair(self, lq, knob):
        knob = self.noise.parse_knob(knob)
        up = F.interpolate(lq, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)
        return up, (up + knob / 2000).clamp(0, 1)

    def endpoints(self, lq, knob, batch=None):
        self.endpoint_calls += 1
        return self._pair(lq, knob)

    def forward(self, lq, knob=None, batch=None):
        self.forward_calls += 1
        return self._pair(lq, knob)[0]


class StubSystem(L.LightningModule):
    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def validation_step(self, batch, batch_idx):
        return {"sr": self.generator(batch["lq"])}


def test_knob_gamma_grid_computes_endpoints_once_per_image_and_knob(tmp_path):
    gen = StubEndpoints()
    sweep = KnobSweep.for_generator(gen, ["250", "750"], [0.0, 0.5, 1.0])
    assert [p.label for p in sweep.points] == ["250_g0", "250_g0.5", "250_g1", "750_g0", "750_g0.5", "750_g1"]
    lq = torch.rand(1, 3, 8, 8)
    outs = sweep.run(gen, lq)
    assert gen.endpoint_calls == 2 and len(outs) == 6
    x_fid, x_real = gen._pair(lq, 750)
    assert torch.equal(outs[3], x_fid) and torch.equal(outs[5], x_real)
    torch.testing.assert_close(outs[4], blend(x_fid, x_real, 0.5))

    curve = FidelityRealismCurve(tmp_path / "curves", knobs=[250, 750], gammas=[0.0, 0.5, 1.0],
                                 fidelity="psnr", realism="ssim", reference=[0.0, 0.0])
    gen.endpoint_calls = 0
    _trainer(tmp_path, [curve]).validate(StubSystem(gen), dataloaders=_val_loader(n=3), verbose=False)
    assert gen.endpoint_calls == 3 * 2  # once per image and knob, whatever the number of γ
    payload = json.loads((tmp_path / "curves" / "step000000.json").read_text())
    assert [(p["knob"], p["gamma"]) for p in payload["points"]] == [(k, g) for k in (250, 750) for g in (0.0, 0.5, 1.0)]
    by_label = {p["label"]: p["metrics"]["psnr"] for p in payload["points"]}
    assert by_label["250_g0"] == pytest.approx(by_label["750_g0"])  # γ = 0 is the fidelity endpoint
    assert by_label["750_g1"] < by_label["250_g1"]  # a stronger knob moves the realism endpoint further
    assert (tmp_path / "curves" / "step000000.png").stat().st_size > 0


def test_bad_curve_settings_fail_before_any_pass(tmp_path):
    gen = StubEndpoints()
    module = StubSystem(gen)
    with pytest.raises(ConfigError, match="lpips"):
        FidelityRealismCurve(tmp_path, realism="lpips").setup(None, module, "fit")  # no LPIPS weights given
    with pytest.raises(ConfigError, match="bad knob"):
        FidelityRealismCurve(tmp_path, knobs=[5000], realism="ssim").setup(None, module, "fit")
    with pytest.raises(ValueError, match="different"):
        FidelityRealismCurve(tmp_path, fidelity="psnr", realism="psnr")
    plain = StubEndpoints()
    plain.has_endpoints = False
    with pytest.raises(ConfigError, match="endpoints"):
        KnobSweep.for_generator(plain, None, [0.5])
    assert gen.endpoint_calls == 0 and gen.forward_calls == 0


def test_every_n_epochs_runs_once_in_every_nth_epoch(tmp_path):
    curve = FidelityRealismCurve(tmp_path, every_n_epochs=2)
    due = []
    for epoch in (0, 1, 1, 2, 3):
        trainer = SimpleNamespace(sanity_checking=False, current_epoch=epoch)
        ok = curve._due(trainer)
        if ok:
            curve._last_epoch = epoch
        due.append(ok)
    assert due == [False, True, False, False, True]
    assert not FidelityRealismCurve(tmp_path)._due(SimpleNamespace(sanity_checking=True, current_epoch=0))


def test_niqe_on_too_small_validation_crops_fails_at_compose():
    """NIQE needs two 96x96 patches: 128x128 validation crops fail before training, not at the first validation."""
    from lit_sr.config.compose import compose

    with pytest.raises(ConfigError, match=r"callbacks.fr_curve: NIQE needs .* data.val_crop=192"):
        compose(["callbacks=fr_curve", "noise=rgpa", "data.val_crop=128"])
    with pytest.raises(ConfigError, match=r"val.metrics: NIQE needs"):
        compose(["val.metrics=[psnr,niqe]", "data.val_crop=128"])
    compose(["callbacks=fr_curve", "noise=rgpa", "data.val_crop=192"])
    compose(["callbacks=fr_curve", "noise=rgpa", "data.val_crop=128", "callbacks.fr_curve.realism=ssim",
             "callbacks.fr_curve.metrics=[psnr]", "callbacks.fr_curve.reference=[10,0]"])


# ------------------------------------------------------------------------------ real models, real bookkeeping

# A short train.py run with the curve callback: tiny backbone, PSNR (fidelity) against SSIM (realism).
CURVE_RUN = ["backbone=tiny", "callbacks=fr_curve", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
             "data.batch_size=1", "data.crop_size=32", "data.val_crop=64", "val.metrics=[psnr]",
             "val.num_sample_images=0", "export.enabled=false", "callbacks.fr_curve.metrics=[psnr,ssim]",
             "callbacks.fr_curve.realism=ssim", "callbacks.fr_curve.reference=[10,0]",
             "callbacks.fr_curve.max_images=2"]


class CurveSpy:
    """Records, while the curve callback measures, every generator pass (knob, t, endpoint, SR image)
    and every image the scores see — through the real classes, nothing replaced."""

    def __init__(self, monkeypatch) -> None:
        from lit_sr.metrics.sweep import SweepScores
        from lit_sr.model.generator import OneStepSR

        self.active, self.measures = False, []  # one entry per curve run: {"step", "passes", "scored"}
        spy = self
        measure, step, endpoint_step, add = (FidelityRealismCurve.measure, OneStepSR.step, OneStepSR.endpoint_step,
                                             SweepScores.add)

        def measure_spy(curve, trainer, pl_module):
            spy.measures.append({"step": trainer.global_step, "passes": [], "scored": [], "endpoint": []})
            spy.active = True
            try:
                return measure(curve, trainer, pl_module)
            finally:
                spy.active = False

        def step_spy(gen, lq, knob=None, *args, **kwargs):
            out = step(gen, lq, knob, *args, **kwargs)
            if spy.active:
                spy.measures[-1]["passes"].append((knob, out.t.tolist(), out.sr.detach().clone()))
            return out

        def endpoint_spy(gen, name, *args, **kwargs):
            if spy.active:
                spy.measures[-1]["endpoint"].append(name)
            return endpoint_step(gen, name, *args, **kwargs)

        def add_spy(scores, index, sr, hq, name=""):
            if spy.active:
                spy.measures[-1]["scored"].append((index, sr.detach().clone(), hq.detach().clone()))
            return add(scores, index, sr, hq, name)

        monkeypatch.setattr(FidelityRealismCurve, "measure", measure_spy)
        monkeypatch.setattr(OneStepSR, "step", step_spy)
        monkeypatch.setattr(OneStepSR, "endpoint_step", endpoint_spy)
        monkeypatch.setattr(SweepScores, "add", add_spy)


def _psnr_y(sr: torch.Tensor, hq: torch.Tensor, border: int = 4) -> float:
    """PSNR on BT.601 Y (BasicSR's protocol: Y in [16, 235], scale-wide border crop), written out here."""
    def y(img):
        img = img.double().clamp(0, 1)
        return (16 + 65.481 * img[:, 0] + 128.553 * img[:, 1] + 24.966 * img[:, 2]) / 255

    diff = (y(sr) - y(hq))[:, border:-border, border:-border]
    return float(-10 * torch.log10(diff.square().mean()))


def _hypervolume_max(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both coordinates higher-is-better) above ``ref``: a sweep in x."""
    area, best_y = 0.0, ref[1]
    ordered = sorted((p for p in points if p[0] > ref[0] and p[1] > ref[1]), reverse=True)
    for (x, y), nxt in zip(ordered, [*(p[0] for p in ordered[1:]), ref[0]]):
        best_y = max(best_y, y)
        area += (x - nxt) * (best_y - ref[1])
    return area


def _curve_files(run_dir) -> tuple[list[dict], dict, list[dict]]:
    """The curve's CSV rows and JSON of its only step, and the run's metrics.csv rows."""
    stems = sorted(p.stem for p in (run_dir / "curves").glob("step*.json"))
    assert len(stems) == 1, stems
    with open(run_dir / "curves" / f"{stems[0]}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    payload = json.loads((run_dir / "curves" / f"{stems[0]}.json").read_text())
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        logged = list(csv.DictReader(fh))
    return rows, payload, logged


def _check_rows_scores_and_hypervolume(spy_run: dict, rows: list[dict], payload: dict, logged: list[dict],
                                       labels: list[str]) -> None:
    """Each row's PSNR is the mean over the scored images, the hypervolume is that of the rows, and both
    are what the run logged at the curve's step."""
    assert [r["label"] for r in rows] == labels
    by_point: dict[int, list[float]] = {}
    for index, sr, hq in spy_run["scored"]:
        by_point.setdefault(index, []).append(_psnr_y(sr, hq))
    assert sorted(by_point) == list(range(len(labels))) and all(len(v) == 2 for v in by_point.values())  # max_images
    psnr = [float(r["psnr"]) for r in rows]
    ssim = [float(r["ssim"]) for r in rows]
    assert psnr == pytest.approx([sum(v) / len(v) for _, v in sorted(by_point.items())], rel=1e-9)
    expected_hv = _hypervolume_max(list(zip(psnr, ssim)), (10.0, 0.0))
    assert expected_hv > 0 and payload["hypervolume"] == pytest.approx(expected_hv, rel=1e-9)
    at_step = [r for r in logged if r.get("curve/hypervolume")]
    assert len(at_step) == 1  # logged once: by the one curve run
    assert float(at_step[0]["curve/hypervolume"]) == pytest.approx(expected_hv, rel=1e-5)
    for label, value in zip(labels, psnr):
        assert float(at_step[0][f"curve/psnr@{label}"]) == pytest.approx(value, rel=1e-5)


@pytest.mark.slow
def test_rgpa_curve_in_a_real_run_sweeps_its_t_values_once_every_second_epoch(tmp_path, monkeypatch):
    """RGPA's sweep t ∈ {50, …, 400} reaches the generator as those timesteps; with every_n_epochs=2 the curve
    runs once, at the first validation of epoch 1, and its rows, hypervolume and logged values agree."""
    import train

    spy = CurveSpy(monkeypatch)
    trainer = train.run([*CURVE_RUN, "noise=rgpa", f"run_dir={tmp_path}", "data.epoch_size=2",
                         "trainer.max_steps=6", "trainer.val_check_interval=1", "callbacks.fr_curve.every_n_epochs=2"])
    assert trainer.global_step == 6
    assert [m["step"] for m in spy.measures] == [3]  # validations at steps 1-6: only epoch 1's first one
    curve = next(c for c in trainer.callbacks if isinstance(c, FidelityRealismCurve))
    assert curve._last_epoch == 1 and [(h["step"], h["epoch"]) for h in curve.history] == [(3, 1)]
    assert json.loads((tmp_path / "curves" / "history.json").read_text()) == curve.history
    run = spy.measures[0]
    knobs = [50, 100, 200, 300, 400]
    assert [p[0] for p in run["passes"]] == knobs * 2  # two images, every knob once each
    assert all(t == [k] for k, t, _ in run["passes"])  # the knob is the timestep the pass ran at
    assert all(torch.equal(sr, p[2]) for (_, sr, _), p in zip(run["scored"], run["passes"]))  # scored as generated
    rows, payload, logged = _curve_files(tmp_path)
    assert [int(r["knob"]) for r in rows] == knobs and {int(r["step"]) for r in rows} == {3}
    _check_rows_scores_and_hypervolume(run, rows, payload, logged, [str(k) for k in knobs])
    assert len({r["psnr"] for r in rows}) == len(knobs)  # every t gives another image


def test_ldg_curve_in_a_real_run_sweeps_the_group_timesteps(tmp_path, monkeypatch):
    """LDG's curve sweeps its calibrated groups' t ∈ {250, 500, 750} at every validation (every_n_epochs=null)."""
    import train

    spy = CurveSpy(monkeypatch)
    trainer = train.run([*CURVE_RUN, "noise=ldg", "noise.grouping=quantile", f"run_dir={tmp_path}",
                         "data.epoch_size=8", "trainer.max_steps=2", "trainer.val_check_interval=2"])
    assert [m["step"] for m in spy.measures] == [2]
    curve = next(c for c in trainer.callbacks if isinstance(c, FidelityRealismCurve))
    assert [h["step"] for h in curve.history] == [2]
    run = spy.measures[0]
    assert [(p[0], p[1]) for p in run["passes"]] == [(t, [t]) for t in (250, 500, 750)] * 2
    rows, payload, logged = _curve_files(tmp_path)
    assert [r["knob"] for r in rows] == ["250", "500", "750"]
    _check_rows_scores_and_hypervolume(run, rows, payload, logged, ["250", "500", "750"])


def test_ifcsr_curve_in_a_real_run_blends_its_two_trained_endpoints_at_each_gamma(tmp_path, monkeypatch):
    """IFCSR's curve computes the fidelity and realism endpoints once per image and scores (1-γ)·x_fid + γ·x_real
    for γ = 0, 0.25, …, 1; the realism endpoint differs from the fidelity one after its stage trained."""
    import train

    spy = CurveSpy(monkeypatch)
    trainer = train.run([*CURVE_RUN, "experiment=ifcsr", f"run_dir={tmp_path}", "stages.0.steps=1", "optim.lr=1e-3",
                         "data.epoch_size=4", "trainer.max_steps=2", "trainer.val_check_interval=2"])
    assert trainer.lightning_module.stage_index == 1 and [m["step"] for m in spy.measures] == [2]
    run = spy.measures[0]
    assert run["endpoint"] == ["fidelity", "realism"] * 2  # once per image, whatever the number of γ
    gammas = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(knob is None and t == [999] for knob, t, _ in run["passes"])  # uniform noise: no knob, t = 999
    for image in range(2):
        x_fid, x_real = run["passes"][2 * image][2], run["passes"][2 * image + 1][2]
        assert (x_fid - x_real).abs().max() > 1e-4
        scored = run["scored"][len(gammas) * image:len(gammas) * (image + 1)]
        assert [index for index, _, _ in scored] == list(range(len(gammas)))
        for gamma, (_, sr, _) in zip(gammas, scored):
            torch.testing.assert_close(sr, (1 - gamma) * x_fid + gamma * x_real, rtol=0, atol=1e-6)
    rows, payload, logged = _curve_files(tmp_path)
    assert [float(r["gamma"]) for r in rows] == gammas and [p["gamma"] for p in payload["points"]] == gammas
    _check_rows_scores_and_hypervolume(run, rows, payload, logged, ["g0", "g0.25", "g0.5", "g0.75", "g1"])
