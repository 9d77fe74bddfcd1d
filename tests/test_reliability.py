"""Fault tolerance: safe loading, atomic files, pre-emption, faithful resume, logs, NaN, bad data, bad config.

One test (or more) per failure mode; each was reproduced against the earlier code first.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from lit_sr.errors import ConfigError, WeightsError

ROOT = Path(__file__).resolve().parent.parent
FAST = ["trainer.enable_progress_bar=false", "data.epoch_size=16", "data.batch_size=2", "val.metrics=[psnr]",
        "trainer.log_every_n_steps=1", "trainer.val_check_interval=1000", "val.num_sample_images=0"]


def KEEP_EVERY(n: int) -> list[str]:
    """Keep a checkpoint file every n optimizer steps (no monitored metric needed)."""
    return [f"checkpoint.last.every_n_train_steps={n}", "checkpoint.last.keep_periodic=true"]


def _popen(run_dir: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), f"run_dir={run_dir}", *FAST, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def _train(run_dir: Path, *args: str, code: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = _popen(run_dir, *args, env=env)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == code, err[-3000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _last_line(text: str) -> str:
    return [ln for ln in text.strip().splitlines() if ln.strip()][-1]


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as fh:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}


# ------------------------------------------------------------------------------ safety


class _Payload:
    """Unpickling this writes a file: the proof that a checkpoint ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.slow
def test_a_pickle_payload_is_refused_by_every_entry_point(tmp_path):
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {"config": {}}, "payload": _Payload(marker)}, evil)
    (tmp_path / "lq").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "lq" / "a.png")
    runs = [
        [sys.executable, "-m", "lit_sr.infer", "--model", str(evil), "--input", str(tmp_path / "lq"),
         "--output", str(tmp_path / "sr")],
        [sys.executable, "-m", "lit_sr.evaluate", "--model", str(evil), "--lq-dir", str(tmp_path / "lq")],
        [sys.executable, str(ROOT / "train.py"), "experiment=mem", f"mem.generator_export={evil}",
         f"run_dir={tmp_path / 'mem'}"],
        [sys.executable, str(ROOT / "train.py"), f"ckpt_path={evil}", f"run_dir={tmp_path / 'resume'}"],
    ]
    for cmd in runs:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 2, (cmd, proc.stderr[-2000:])
        line = _last_line(proc.stderr)
        assert line.startswith("error: ") and "refused" in line and "Traceback" not in proc.stderr, (cmd, line)
        assert not marker.exists(), cmd


def test_a_model_folder_whose_config_names_an_arbitrary_callable_is_refused(make_cfg, tiny_bb, tmp_path):
    from lit_sr.config.build import build_generator
    from lit_sr.config.loading import load_generator
    from lit_sr.errors import WeightsError
    from lit_sr.model import export

    cfg = make_cfg()
    out = export.export_adapter(build_generator(cfg, tiny_bb), tmp_path / "adapter", OmegaConf.to_container(cfg))
    marker = tmp_path / "executed"
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("_target_: lit_sr.model.noise.uniform.UniformNoise",
                                                  f"_target_: os.system\n  command: touch {marker}", 1))
    with pytest.raises(WeightsError, match=r"refusing to load: its config names noise\._target_='os\.system'"):
        load_generator(out)
    assert not marker.exists()
    # a trusted prefix is not enough: the target is resolved and the object compared
    (out / "config.yaml").write_text(text.replace("_target_: lit_sr.model.noise.uniform.UniformNoise",
                                                  f"_target_: lit_sr.config.run.os.system\n  command: touch {marker}", 1))
    with pytest.raises(WeightsError, match=r"noise\._target_='lit_sr\.config\.run\.os\.system', which is not one"):
        load_generator(out)
    assert not marker.exists()


def test_a_failed_export_leaves_the_previous_folder_untouched(make_cfg, tiny_bb, tmp_path, monkeypatch):
    from lit_sr.config.build import build_generator
    from lit_sr.model import export

    g = build_generator(make_cfg(), tiny_bb)
    out = export.export_adapter(g, tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with torch.no_grad():
        next(iter(g.adapters.parameters("denoiser", "main").values())).add_(1.0)  # the new export would differ

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export.export_adapter(g, tmp_path / "adapter")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old files, none half-new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary folder left


def test_non_finite_weights_are_never_exported(make_cfg, tiny_bb, tmp_path):
    from lit_sr.config.build import build_generator
    from lit_sr.model.export import export_adapter

    g = build_generator(make_cfg(), tiny_bb)
    with torch.no_grad():
        next(iter(g.adapters.parameters("denoiser", "main").values())).fill_(float("nan"))
    with pytest.raises(WeightsError, match="non-finite"):
        export_adapter(g, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_a_failed_checkpoint_save_leaves_no_truncated_file(tmp_path, monkeypatch):
    from lit_sr.systems import checkpoint_io

    io = checkpoint_io.AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state": torch.ones(4)}, target)
    good = target.read_bytes()

    def half_then_fail(obj, fh):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", half_then_fail)
    with pytest.raises(OSError):
        io.save_checkpoint({"state": torch.zeros(4)}, target)
    with pytest.raises(OSError):
        io.save_checkpoint({"state": torch.zeros(4)}, tmp_path / "epoch=0-step=8.ckpt")
    assert target.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_full_disk_at_a_checkpoint_is_one_line_and_exit_2_with_the_old_checkpoint_intact(tmp_path, monkeypatch, capsys):
    import train
    from lit_sr.systems import checkpoint_io

    args = [f"run_dir={tmp_path}", *FAST, "trainer.max_steps=2", "callbacks=default", "val=null", "checkpoint=last",
            "checkpoint.last.every_n_train_steps=1", "export.enabled=false"]
    real = checkpoint_io.torch.save
    saves = []

    def second_save_fails(obj, fh):
        saves.append(1)
        if len(saves) > 1:
            fh.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device")
        real(obj, fh)

    monkeypatch.setattr(checkpoint_io.torch, "save", second_save_fails)
    assert train.main(args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[-1] == (f"error: cannot write checkpoint {tmp_path / 'checkpoints' / 'last.ckpt'}: No space left on device "
                       "(the previous one is intact)")
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    assert not (tmp_path / ".lit_sr.lock").exists()


@pytest.mark.filterwarnings("ignore:The number of training batches")  # Lightning's note on this very case
@pytest.mark.parametrize("steps", [3, 13])
def test_the_last_step_is_logged_whatever_log_every_n_steps_says(tmp_path, steps):
    """Lightning logs train/* every log_every_n_steps (10): a 3-step run logged nothing, a 13-step run not its end."""
    import train

    fast = [a for a in FAST if not a.startswith("trainer.log_every_n_steps")]
    assert train.main([f"run_dir={tmp_path}", *fast, f"trainer.max_steps={steps}", "trainer.log_every_n_steps=10",
                       "callbacks=default", "val=null", "checkpoint=last", "export.enabled=false"]) == 0
    logged = _losses(tmp_path)
    assert max(logged) == steps - 1  # Lightning's step index of the last optimizer step (0-based)
    assert sorted(logged) == sorted({9, steps - 1} & set(range(steps)))


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_run(tmp_path):
    from lit_sr.systems.checkpoint_io import remove_orphans

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that is gone
    (tmp_path / f".adapter.tmp-{dead}").mkdir()
    (tmp_path / f".adapter.tmp-{dead}" / "lit_sr_state.safetensors").write_bytes(b"half")
    (tmp_path / f".last.ckpt.tmp-{dead}").write_bytes(b"half")
    (tmp_path / f".adapter.tmp-{os.getppid()}").mkdir()  # a live process's: left alone
    (tmp_path / "adapter").mkdir()
    removed = remove_orphans(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".adapter.tmp-{dead}", f".last.ckpt.tmp-{dead}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["adapter", f".adapter.tmp-{os.getppid()}"])


# ------------------------------------------------------------------------------ faults


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    start = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - start < timeout, f"{path} never appeared"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_last_ckpt_at_the_current_step_and_exits_non_zero(tmp_path, sig):
    proc = _popen(tmp_path, "trainer.max_steps=500", "checkpoint.last.every_n_train_steps=3", "export.enabled=true")
    _wait_for(tmp_path / "checkpoints" / "last.ckpt", proc)  # written at step 3: training is under way
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err[-3000:]
    line = _last_line(err)
    assert line.startswith(f"error: stopped by {sig.name} at step ") and "last.ckpt" in line
    step = int(line.split(" at step ")[1].split(":")[0])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == step >= 3
    assert not (tmp_path / "adapter").exists()  # an interrupted run exports nothing


@pytest.mark.slow
def test_a_signal_during_the_export_finishes_it_then_exits_3_leaving_nothing_behind(tmp_path):
    proc = _popen(tmp_path, "trainer.max_steps=2", "callbacks.export._target_=tests.signal_helpers.SignalDuringExport",
                  "export.enabled=true")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 3, err[-3000:]
    assert _last_line(err).startswith("error: received SIGTERM after training: the run finished what it was writing")
    assert (tmp_path / "adapter" / "lit_sr_state.safetensors").is_file()  # the export completed
    assert not list(tmp_path.glob(".adapter.*")) and not (tmp_path / ".lit_sr.lock").exists()


@pytest.mark.slow
def test_a_signal_during_the_final_validation_saves_and_exits_3(tmp_path):
    proc = _popen(tmp_path, "trainer.max_steps=2", "trainer.val_check_interval=2", "export.enabled=true",
                  "+callbacks.signal._target_=tests.signal_helpers.SignalAtFinalValidation")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 3, err[-3000:]
    line = _last_line(err)
    assert line.startswith("error: stopped by SIGTERM at step 2: saved ") and "ckpt_path=last" in line
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not (tmp_path / ".lit_sr.lock").exists()


@pytest.mark.slow
def test_slurm_requeue_signal_saves_requeues_and_exits_non_zero(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'scontrol.args'}\n")
    scontrol.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    proc = _popen(tmp_path / "run", "trainer.max_steps=500", "checkpoint.last.every_n_train_steps=3", env=env)
    _wait_for(tmp_path / "run" / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err[-3000:]
    assert "requeued SLURM job 4242" in _last_line(err)
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["uniform", "rgpa"])
def test_resume_mid_epoch_reproduces_the_straight_run_exactly(tmp_path, noise):
    """24 steps straight vs. resumed from the straight run's step-10 checkpoint (mid epoch 1 of 8 batches)."""
    common = [f"noise={noise}", "trainer.max_steps=24", "data.epoch_size=16", *KEEP_EVERY(10)]
    straight = tmp_path / "straight"
    _train(straight, *common)
    step10 = straight / "checkpoints" / "step0000010.ckpt"
    resumed = tmp_path / "resumed"
    _train(resumed, *common, f"ckpt_path={step10}")
    a, b = _losses(straight), _losses(resumed)
    assert sorted(b) == list(range(10, 24)) and len(a) == 24
    for step in range(10, 24):
        assert a[step] == b[step], (step, a[step], b[step])  # bit-identical loss curve
    wa = load_file(str(straight / "adapter" / "lit_sr_state.safetensors"))
    wb = load_file(str(resumed / "adapter" / "lit_sr_state.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_resume_in_the_same_run_dir_appends_to_the_logs_and_a_second_run_is_refused(tmp_path):
    _train(tmp_path, "trainer.max_steps=12", *KEEP_EVERY(4))
    step8 = tmp_path / "checkpoints" / "step0000008.ckpt"
    _train(tmp_path, "trainer.max_steps=16", f"ckpt_path={step8}")
    with open(tmp_path / "csv" / "metrics.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r.get("train/loss")]
    assert steps == list(range(16))  # 0-7 kept, 8-11 logged once (the resumed ones), 12-15 appended
    live = _popen(tmp_path, "trainer.max_steps=500", *KEEP_EVERY(2), "ckpt_path=last")
    try:
        _wait_for(tmp_path / "checkpoints" / "step0000018.ckpt", live)
        second = _train(tmp_path, "trainer.max_steps=2", code=2)
        assert "is in use by pid" in _last_line(second.stderr) and "run_lock=false" in _last_line(second.stderr)
    finally:
        live.send_signal(signal.SIGTERM)
        live.communicate(timeout=300)
    assert not (tmp_path / ".lit_sr.lock").exists()  # released on the way out


@pytest.mark.slow
def test_a_diverging_run_stops_with_one_line_and_exports_nothing(tmp_path):
    proc = _train(tmp_path, "optim.lr=1e12", "optim.max_nonfinite_steps=3", "trainer.max_steps=30", code=2)
    line = _last_line(proc.stderr)
    assert line.startswith("error: training stopped: 4 optimizer steps had a non-finite loss or gradient"), line
    assert "optim.lr" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "adapter").exists()


def test_lr_inf_is_refused_at_compose(make_cfg):
    with pytest.raises(ConfigError, match="optim.lr must be a finite number > 0"):
        make_cfg("optim.lr=inf")


def test_nan_metrics_are_reported_not_dropped():
    from lit_sr.metrics import MetricSuite

    suite = MetricSuite(["psnr", "ssim"], scale=1, crop_border=0)
    suite.update(torch.full((1, 3, 16, 16), float("nan")), torch.rand(1, 3, 16, 16))
    values = suite.compute()
    assert set(values) == {"psnr", "ssim"} and all(v != v for v in values.values())


# ------------------------------------------------------------------------------ bad data


def _png(path: Path, size: int = 80, value: int | None = None, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.full((size, size, 3), value, np.uint8) if value is not None else rng.integers(0, 255, (size, size, 3), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_symlink_loops_are_skipped_and_counted(tmp_path, caplog):
    from datamodules.file_index import index_images

    root = tmp_path / "photos"
    _png(root / "a.png")
    (root / "loop").symlink_to("loop")  # a link to itself
    (root / "self.png").symlink_to("self.png")
    with caplog.at_level("WARNING"):
        files = index_images([root], tmp_path / "cache")
    assert files == [root.resolve() / "a.png"]  # skipped means left out, not decoded later
    assert "skipped 2 entries that cannot be followed" in caplog.text
    assert index_images([root]) == files == index_images([root], tmp_path / "cache")  # uncached, and cached


def test_bad_files_are_replaced_uniformly_over_the_good_ones(tmp_path):
    from datamodules.hr_folder import HRCropDataset

    good = [_png(tmp_path / f"g{i}.png", seed=i) for i in range(4)]
    bad = [tmp_path / f"b{i}.png" for i in range(4)]
    for b in bad:
        b.write_bytes(b"not a png")
    ds = HRCropDataset(good + bad, crop_size=32, epoch_size=8)
    counts: dict[str, int] = {}
    reported: list[str] = []
    for draw in range(4000):
        item = ds[draw]
        counts[item["path"]] = counts.get(item["path"], 0) + 1
        reported += item["bad_files"]
    assert set(counts) == {str(p) for p in good}
    assert max(counts.values()) / min(counts.values()) < 1.15  # 1500 draws of good files + 500 each of replacements
    assert sorted(reported) == sorted(str(b) for b in bad)  # each bad file reported exactly once
    assert torch.equal(ds[123]["hq"], HRCropDataset(good + bad, crop_size=32, epoch_size=8)[123]["hq"])  # by draw


def test_a_huge_image_is_decoded_once_and_cropped_from_a_working_copy(tmp_path, monkeypatch, caplog):
    from datamodules import hr_folder

    big = tmp_path / "big.png"
    y, x = np.mgrid[0:2000, 0:2000]
    Image.fromarray(np.stack([(x % 256), (y % 256), ((x + y) % 256)], -1).astype(np.uint8)).save(big)
    calls = []
    real = hr_folder.decode_image
    monkeypatch.setattr(hr_folder, "decode_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    ds = hr_folder.HRCropDataset([big], crop_size=64, epoch_size=50, working_copy_pixels=1_000_000,
                                 cache_dir=tmp_path / "decoded")
    crops = [ds[i] for i in range(50)]
    assert len(calls) == 1  # 50 crops, one decode
    full = real(big)
    for item in crops[:5]:
        cy, cx, flipped = item["crop"]
        want = torch.from_numpy(full[cy:cy + 64, cx:cx + 64].transpose(2, 0, 1).astype(np.float32) / 255)
        assert torch.equal(item["hq"], want.flip(-1) if flipped else want)
    limited = hr_folder.HRCropDataset([big, _png(tmp_path / "small.png")], crop_size=64, max_pixels=1_000_000)
    with caplog.at_level("WARNING"):
        items = [limited[i] for i in range(4)]
    assert all(it["path"].endswith("small.png") for it in items)
    assert [b for it in items for b in it["bad_files"]] == [str(big)]
    assert "exceeds the pixel limit of 1 MP (data.max_pixels)" in caplog.text


@pytest.mark.parametrize("case", ["empty", "all_bad", "missing", "paired_missing"])
def test_data_problems_are_one_line_before_the_model_is_built(tmp_path, make_cfg, case):
    from lit_sr.config.build import build_datamodule

    folder = tmp_path / "train"
    folder.mkdir()
    if case == "all_bad":
        (folder / "x.png").write_bytes(b"broken")
        (folder / "y.jpg").write_bytes(b"broken too")
    overrides = {"empty": [f"data.train_dirs={folder}"], "all_bad": [f"data.train_dirs={folder}"],
                 "missing": [f"data.train_dirs=[{tmp_path / 'nope'}]"],
                 "paired_missing": [f"+data.val_paired.lq_root={tmp_path / 'lq'}", f"+data.val_paired.hq_root={folder}"]}
    expected = {"empty": "no image files found", "all_bad": "every training image is unusable",
                "missing": "data.train_dirs: directory not found", "paired_missing": "val_paired.lq_root is not an existing folder"}
    with pytest.raises(ConfigError, match=expected[case]) as info:
        build_datamodule(make_cfg(*overrides[case])).check()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("layout", ["drealsr", "same_name"])
def test_paired_validation_from_the_config_builds_its_set(tmp_path, make_cfg, layout):
    """data.val_paired arrives from the config as a plain mapping; the datamodule builds the paired set."""
    from lit_sr.config.build import build_datamodule

    names = {"drealsr": ("x_x4.png", "x_x1.png"), "same_name": ("x.png", "x.png")}[layout]  # (LQ, HQ)
    _png(tmp_path / "lq" / names[0], size=24)
    _png(tmp_path / "hq" / names[1], size=96)
    dm = build_datamodule(make_cfg(f"+data.val_paired={{lq_root:{tmp_path / 'lq'},hq_root:{tmp_path / 'hq'},"
                                   f"layout:{layout}}}"))
    dm.check()
    assert len(dm.val_set) == 1 and dm.val_set[0]["hq"].shape[-1] == 4 * dm.val_set[0]["lq"].shape[-1]


def test_a_string_train_dirs_is_one_folder(tmp_path, make_cfg):
    from lit_sr.config.build import build_datamodule

    _png(tmp_path / "photos" / "a.png", size=96)
    dm = build_datamodule(make_cfg(f"data.train_dirs={tmp_path / 'photos'}"))
    dm.check()
    assert [p.name for p in dm.train_set.files] == ["a.png"]


# ------------------------------------------------------------------------------ bad config


@pytest.mark.parametrize("overrides,message", [
    (["data.crop_size=-64"], "data.crop_size: -64 is outside"),
    (["data.crop_size=0"], "data.crop_size: 0 is outside"),
    (["data.batch_size=0"], "data.batch_size: 0 is outside"),
    (["trainer.max_steps=-5"], "trainer.max_steps must be a number of optimizer steps >= 1"),
    (["data.num_workers=-1"], "data.num_workers: -1 is outside"),
    (["val=null"], "needs validation metrics, but val is null"),
    (["model.gamma=1.5"], "model.gamma: 1.5 is outside"),
    (["tmg=comat", "model.tile_latent=8"], "model.tile_latent=8 splits it into tiles"),
    (["callbacks=fr_curve", "callbacks.fr_curve.without_control=error"], "has none: use a noise strategy with a knob"),
    (["checkpoint=hypervolume", "callbacks=fr_curve"], "needs a model with a fidelity-realism control"),
])
def test_bad_config_is_one_line_at_compose(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        make_cfg(*overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides,message", [
    (["data.min_size=10"], "data.min_size=10 is smaller than data.crop_size=64"),
    (["noise=rgpa", "noise.t_max=1200"], r"noise.t_max=1200 outside \[0, 1000\)"),
])
def test_bad_values_checked_by_constructors_fail_before_the_backbone(make_cfg, monkeypatch, overrides, message):
    from lit_sr.config import build

    monkeypatch.setattr(build, "build_backbone", lambda cfg: pytest.fail("the backbone was built"))
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError, match=message):
        build.build_datamodule(cfg)
        build.build_generator(cfg)


def test_a_mem_on_a_non_ldg_generator_is_refused_before_building_it(make_cfg, tiny_bb, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from lit_sr.config import systems
    from lit_sr.config.build import build_generator
    from lit_sr.model.export import export_adapter

    cfg = make_cfg("noise=rgpa")
    export_adapter(build_generator(cfg, tiny_bb), tmp_path / "rgpa", OmegaConf.to_container(cfg))
    monkeypatch.setattr(systems, "load_generator", lambda *a: pytest.fail("the generator was built"))
    with pytest.raises(ConfigError, match="trained with RGPANoise"):
        systems.build_system(make_cfg("experiment=mem", f"mem.generator_export={tmp_path / 'rgpa'}"))


# ------------------------------------------------------------------------------ inference outputs


def test_inference_keeps_names_distinct_refuses_to_overwrite_and_checks_the_output_first(make_cfg, tiny_bb, tmp_path):
    from omegaconf import OmegaConf

    from lit_sr import infer
    from lit_sr.config.build import build_generator
    from lit_sr.model.export import export_adapter

    cfg = make_cfg()
    export_adapter(build_generator(cfg, tiny_bb), tmp_path / "model", OmegaConf.to_container(cfg))
    src = tmp_path / "in"
    _png(src / "dup.png", size=16)
    Image.open(src / "dup.png").save(src / "dup.jpg")
    _png(src / "solo.png", size=16, seed=3)
    args = ["--model", str(tmp_path / "model"), "--input", str(src), "--output", str(tmp_path / "out")]
    stats = infer.run(infer.parse_args(args))
    assert (stats.written, stats.skipped, stats.failed) == (3, 0, 0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dup_jpg.png", "dup_png.png", "solo.png"]
    with pytest.raises(Exception, match="exists .*use --overwrite"):
        infer.run(infer.parse_args(args))
    assert infer.run(infer.parse_args([*args, "--overwrite"])).written == 3
    (tmp_path / "afile").write_text("x")
    with pytest.raises(Exception, match="is a file, not a folder"):
        infer.run(infer.parse_args([*args[:-1], str(tmp_path / "afile")]))
    # /proc refuses new folders even to root: a read-only place the test can rely on
    with pytest.raises(Exception, match="is not writable"):
        infer.run(infer.parse_args([*args[:-1], "/proc/self/lit_sr_out"]))
