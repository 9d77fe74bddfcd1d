"""Every random choice of each Real-ESRGAN preset follows its YAML, on the worker and the device path.

Parameters are drawn through the data module's own entry points (the loader's collate for
``data.degrade_on=worker``, ``on_after_batch_transfer`` for ``device``) and compared with the values
of the composed config. Frequencies must lie within 5 binomial standard errors of the configured
probability, continuous draws must fill their configured range (minimum and maximum close to its
ends) and pass a Kolmogorov–Smirnov test against the uniform law. Seeds are fixed, so the tests
are deterministic; the bounds are wide enough not to fail by chance and narrow enough that a wrong
range or probability fails them (with 3072 draws: a probability off by 0.05 at p = 0.5, by 0.015 at 0.01).
"""
from __future__ import annotations

import copy
import math
from collections import defaultdict
from functools import lru_cache

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import stats

from datamodules.sr_datamodule import DegradeCollate, SRDataModule
from lit_sr.config.compose import compose

PRESETS = ("realesrgan_x4plus", "osediff", "s3diff")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BATCHES, BATCH, HQ = 24, 128, 16  # 3072 draws per path and preset; 16² HQ keeps applying cheap
# Real-ESRGAN's classical order within a round, used when a stage gives no ``orders``.
CLASSICAL_ORDER = ("blur", "resize", "noise", "jpeg")
KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
# BlurSpec's documented defaults for keys a preset leaves out (Real-ESRGAN's first-stage values).
BLUR_DEFAULTS = {"prob": 1.0, "kernel_list": list(KERNELS), "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
                 "sigma": [0.2, 3.0], "betag": [0.5, 4.0], "betap": [1.0, 2.0], "sinc_prob": 0.1,
                 "sinc_cutoff": [0.2, 1.0], "sinc_cutoff_small": [1 / 3, 1.0]}
RESIZE_DEFAULTS = {"prob": [0.0, 0.0, 1.0], "range": [1.0, 1.0], "modes": ["area", "bilinear", "bicubic"]}
ID = "_test_sample_id"


@lru_cache(maxsize=None)
def _composed(name: str) -> dict:
    return OmegaConf.to_container(compose([f"degradation={name}"]).degradation, resolve=True)


def preset_config(name: str) -> dict:
    """The ``degradation`` node of the composed training config, as plain Python values (a fresh copy)."""
    return copy.deepcopy(_composed(name))


# ------------------------------------------------------------------------------------------------
# Drawing through the data module, with the ops each sample went through
# ------------------------------------------------------------------------------------------------


def _instrument(deg, calls: dict[int, list[str]]) -> None:
    """Tag each sample of a record with an id and log every op it goes through, in order."""
    sample, counter = deg.sample, [0]

    def tagged_sample(batch_size, generator):
        record = sample(batch_size, generator)
        record.params[ID] = torch.arange(counter[0], counter[0] + batch_size)
        counter[0] += batch_size
        return record

    deg.sample = tagged_sample
    for op in CLASSICAL_ORDER:
        original = getattr(deg, f"_{op}")

        def logged(stage, x, p, sizes, _op=op, _original=original):
            for i in p[ID]:
                calls[int(i)].append(f"{stage.name}.{_op}")
            return _original(stage, x, p, sizes)

        setattr(deg, f"_{op}", logged)


@lru_cache(maxsize=None)  # the equality test reuses two of the draws
def draw(name: str, path: str, device: str = "cpu") -> tuple[dict, dict[str, np.ndarray], dict[int, list[str]]]:
    """``BATCHES`` batches degraded on ``path`` (worker: the loader's collate; device: after transfer)."""
    cfg = preset_config(name)
    deg = instantiate(cfg)
    calls: dict[int, list[str]] = defaultdict(list)
    _instrument(deg, calls)
    seed = 7
    module = SRDataModule(deg, degrade_on=path, seed=seed)
    collate = DegradeCollate(deg if path == "worker" else None, seed)  # what train_dataloader passes
    hq = torch.rand(BATCH, 3, HQ, HQ, generator=torch.Generator().manual_seed(0))
    columns: dict[str, list] = defaultdict(list)
    for b in range(BATCHES):
        items = [{"hq": hq[i], "draw": b * BATCH + i, "path": f"img{i}.png"} for i in range(BATCH)]
        batch = collate(items)
        if path == "device":
            assert "lq" not in batch  # nothing degraded in the loader
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            batch = module.on_after_batch_transfer(batch, 0)
        assert batch["lq"].shape == (BATCH, 3, HQ // 4, HQ // 4) and batch["lq"].device.type == device
        record = batch["degradation"]
        assert record["batch_size"] == BATCH
        for key, value in record.items():
            if key != "batch_size":
                columns[key].extend(value)
    values = {k: np.asarray(v) for k, v in columns.items()}
    assert values[ID].tolist() == list(range(BATCHES * BATCH))
    return cfg, values, calls


# ------------------------------------------------------------------------------------------------
# Statistical checks
# ------------------------------------------------------------------------------------------------


def assert_rate(hits: np.ndarray, p: float, what: str) -> None:
    """The frequency of ``hits`` is ``p``: exactly for p ∈ {0, 1}, else within 5 standard errors."""
    hits = np.asarray(hits, dtype=bool)
    rate = float(hits.mean())
    if p in (0.0, 1.0):
        assert rate == p, f"{what}: rate {rate:.4f}, configured {p}"
        return
    se = math.sqrt(p * (1 - p) / hits.size)
    assert abs(rate - p) <= 5 * se, f"{what}: rate {rate:.4f} over {hits.size} draws, configured {p} (±{5 * se:.4f})"


def assert_uniform(x: np.ndarray, lo: float, hi: float, what: str) -> None:
    """``x`` lies in [lo, hi], reaches both ends and is uniform there (KS p-value > 1e-4)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    assert n >= 50, f"{what}: only {n} draws"
    if hi == lo:
        assert np.all(np.abs(x - lo) <= 1e-6 * max(1.0, abs(lo))), f"{what}: expected all {lo}"
        return
    eps = 1e-6 * max(1.0, abs(lo), abs(hi))  # records hold float32
    assert x.min() >= lo - eps and x.max() <= hi + eps, f"{what}: [{x.min():.4f}, {x.max():.4f}] not in [{lo}, {hi}]"
    # With n uniform draws, a gap of 20/n of the range at either end has probability ≈ e^-20.
    reach = 20.0 / n * (hi - lo)
    assert x.min() - lo <= reach and hi - x.max() <= reach, \
        f"{what}: [{x.min():.4f}, {x.max():.4f}] does not fill [{lo}, {hi}]"
    p = stats.kstest(x, "uniform", args=(lo, hi - lo)).pvalue
    assert p > 1e-4, f"{what}: not uniform on [{lo}, {hi}] (KS p = {p:.2e})"


def assert_categorical(labels: np.ndarray, choices: list, probs: list[float], what: str) -> None:
    """Each of ``choices`` appears with its probability, and nothing else appears."""
    unexpected = set(np.unique(labels).tolist()) - set(choices)
    assert not unexpected, f"{what}: unexpected values {unexpected}"
    for choice, p in zip(choices, probs):
        assert_rate(labels == choice, p, f"{what} = {choice!r}")


def _beta(values: np.ndarray, lo: float, hi: float, what: str) -> None:
    """BasicSR's β: below 1 (uniform on [lo, 1]) or above 1 (uniform on [1, hi]) with equal probability."""
    below = values <= 1.0 if lo >= 1.0 else values < 1.0
    assert_rate(below, 0.5, f"{what} drawn below 1")
    assert_uniform(values[below], min(lo, 1.0), min(hi, 1.0), f"{what} below 1")
    assert_uniform(values[~below], max(lo, 1.0), max(hi, 1.0), f"{what} above 1")


def check_blur(spec: dict, v: dict[str, np.ndarray], pre: str) -> None:
    spec = {**BLUR_DEFAULTS, **spec}
    kind, size = v[pre + "kind"], v[pre + "size"]
    prob, sinc = spec["prob"], spec["sinc_prob"]
    assert_categorical(size, spec["sizes"], [1 / len(spec["sizes"])] * len(spec["sizes"]), pre + "size")
    kernel_probs = [prob * (1 - sinc) * p for p in spec["kernel_prob"]]
    assert_categorical(kind, ["pulse", "sinc", *spec["kernel_list"]], [1 - prob, prob * sinc, *kernel_probs],
                       pre + "kind")
    gaussian = ~np.isin(kind, ["pulse", "sinc"])
    iso = np.isin(kind, ["iso", "generalized_iso", "plateau_iso"])
    if gaussian.any():
        assert_uniform(v[pre + "sigma_x"][gaussian], *spec["sigma"], pre + "sigma_x")
        assert_uniform(v[pre + "sigma_y"][gaussian & ~iso], *spec["sigma"], pre + "sigma_y (anisotropic)")
        assert np.array_equal(v[pre + "sigma_x"][iso], v[pre + "sigma_y"][iso]), pre + "isotropic σx ≠ σy"
        assert_uniform(v[pre + "theta"][gaussian & ~iso], -math.pi, math.pi, pre + "theta")
        assert np.all(v[pre + "theta"][iso] == 0)
        assert np.all(v[pre + "beta"][np.isin(kind, ["iso", "aniso"])] == 1.0)
        _beta(v[pre + "beta"][np.char.startswith(kind.astype(str), "generalized")], *spec["betag"], pre + "beta_g")
        _beta(v[pre + "beta"][np.char.startswith(kind.astype(str), "plateau")], *spec["betap"], pre + "beta_p")
    is_sinc = kind == "sinc"
    cutoff = v[pre + "cutoff"] / math.pi
    assert_uniform(cutoff[is_sinc & (size < 13)], *spec["sinc_cutoff_small"], pre + "cutoff/π (size < 13)")
    assert_uniform(cutoff[is_sinc & (size >= 13)], *spec["sinc_cutoff"], pre + "cutoff/π (size ≥ 13)")
    assert np.all(cutoff[~is_sinc] == 0)


def check_resize(spec: dict, v: dict[str, np.ndarray], pre: str) -> None:
    spec = {**RESIZE_DEFAULTS, **spec}
    scale = v[pre + "scale"]
    up, down, keep = spec["prob"]
    lo, hi = spec["range"]
    assert_rate(scale > 1, up, pre + "up")
    assert_rate(scale < 1, down, pre + "down")
    assert_rate(scale == 1, keep, pre + "keep")
    if up > 0:
        assert_uniform(scale[scale > 1], 1.0, hi, pre + "scale (up)")
    if down > 0:
        assert_uniform(scale[scale < 1], lo, 1.0, pre + "scale (down)")
    modes = spec["modes"]
    assert_categorical(v[pre + "mode"], modes, [1 / len(modes)] * len(modes), pre + "mode")


def check_noise(spec: dict, v: dict[str, np.ndarray], pre: str) -> None:
    kind, level = v[pre + "kind"], v[pre + "level"]
    assert_categorical(kind, ["gaussian", "poisson"], [spec["gaussian_prob"], 1 - spec["gaussian_prob"]], pre + "kind")
    assert_uniform(level[kind == "gaussian"], *spec["gaussian_sigma"], pre + "σ (gaussian)")
    assert_uniform(level[kind == "poisson"], *spec["poisson_scale"], pre + "scale (poisson)")
    assert_rate(v[pre + "gray"], spec["gray_prob"], pre + "gray")
    assert len(np.unique(v[pre + "seed"])) > 0.99 * v[pre + "seed"].size  # every sample its own field


def check_distribution(cfg: dict, v: dict[str, np.ndarray]) -> None:
    """Every sampled parameter of the record against the preset's YAML values."""
    assert_rate(v["clean"], cfg.get("clean_prob", 0.0), "clean")
    expected_keys = {"clean", ID}
    for stage in cfg["stages"]:
        pre = stage["name"] + "."
        expected_keys |= {pre + "apply", pre + "order"}
        assert_rate(v[pre + "apply"], stage.get("prob", 1.0), pre + "apply")
        orders = stage.get("orders") or [[op for op in CLASSICAL_ORDER if op in stage]]
        order_prob = stage.get("order_prob") or [1 / len(orders)] * len(orders)
        assert_categorical(v[pre + "order"], list(range(len(orders))), order_prob, pre + "order")
        if "blur" in stage:
            check_blur(stage["blur"], v, pre + "blur.")
            blur_keys = ("kind", "size", "sigma_x", "sigma_y", "theta", "beta", "cutoff")
            expected_keys |= {pre + "blur." + k for k in blur_keys}
        if "resize" in stage:
            check_resize(stage["resize"], v, pre + "resize.")
            expected_keys |= {pre + "resize.scale", pre + "resize.mode"}
        if "noise" in stage:
            check_noise(stage["noise"], v, pre + "noise.")
            expected_keys |= {pre + "noise." + k for k in ("kind", "level", "gray", "seed")}
        if "jpeg" in stage:
            assert_uniform(v[pre + "jpeg.quality"], *stage["jpeg"]["quality"], pre + "jpeg.quality")
            expected_keys.add(pre + "jpeg.quality")
    assert set(v) == expected_keys  # no op the YAML does not configure


def check_order(cfg: dict, v: dict[str, np.ndarray], calls: dict[int, list[str]]) -> None:
    """Each sample went through the stages in YAML order and through each stage's ops in its drawn order."""
    for i in range(v[ID].size):
        expected = []
        if not v["clean"][i]:
            for stage in cfg["stages"]:
                if v[stage["name"] + ".apply"][i]:
                    orders = stage.get("orders") or [[op for op in CLASSICAL_ORDER if op in stage]]
                    expected += [f"{stage['name']}.{op}" for op in orders[int(v[stage['name'] + '.order'][i])]]
        assert calls[i] == expected, f"sample {i}: ran {calls[i]}, expected {expected}"


@pytest.mark.parametrize("path,device", [("worker", "cpu")] + [("device", d) for d in DEVICES])
@pytest.mark.parametrize("name", PRESETS)
def test_preset_parameters_follow_the_yaml(name: str, path: str, device: str) -> None:
    """Resize directions and factors, blur kinds and ranges (second-stage blur and final sinc probability
    included), noise kind, σ/scale and gray probability, JPEG quality, stage and op order: as in the YAML."""
    cfg, values, calls = draw(name, path, device)
    check_distribution(cfg, values)
    check_order(cfg, values, calls)
    final = cfg["stages"][-1]["name"]
    runs = [tuple(c for c in calls[i] if c.startswith(final + ".")) for i in range(values[ID].size)]
    # Both of the final stage's orders really run (resize → sinc → JPEG and JPEG → resize → sinc).
    assert {r for r in runs if r} == {tuple(f"{final}.{op}" for op in o) for o in cfg["stages"][-1]["orders"]}


def test_device_path_draws_what_the_worker_path_draws_on_cpu() -> None:
    """The same batches get the same record on both paths (the generator depends on the draws only)."""
    _, worker, worker_calls = draw("osediff", "worker", "cpu")
    _, device, device_calls = draw("osediff", "device", "cpu")
    assert worker.keys() == device.keys()
    for key in worker:
        assert np.array_equal(worker[key], device[key]), key
    assert worker_calls == device_calls
