"""Fidelity–realism curve: hypervolume math, knob/γ sweeps, the callback's files and logged values."""
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
