"""MEM (RCOD): learns M_L from LQ-side features, round-trips through its file, drives knob=adaptive."""
from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lit_sr.errors import WeightsError
from lit_sr.model.mem import MetricEstimator, generator_latents, load_mem, mem_features, save_mem
from lit_sr.model.noise.base import NoiseContext
from lit_sr.model.noise.ldg import LDGNoise, latent_cosine
from lit_sr.model.parameterisation import SD_SCHEDULER, from_scheduler_config
from lit_sr.systems.mem import MEMSystem


def _synthetic(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_L, x, M_L): a smooth HQ latent plus white noise of random strength (the 'degradation')."""
    base = torch.randn(n, 4, 4, 4, generator=gen)
    z_h = F.interpolate(base, size=(16, 16), mode="bilinear", align_corners=False)
    sigma = torch.rand(n, 1, 1, 1, generator=gen) * 1.5
    z_l = z_h + sigma * torch.randn(n, 4, 16, 16, generator=gen)
    x = torch.zeros(n, 3, 16, 16)  # image cues constant here: the latent carries the signal
    return z_l, x, latent_cosine(z_l, z_h)


def _train_estimator(steps: int = 200) -> MetricEstimator:
    torch.manual_seed(0)
    est = MetricEstimator(latent_channels=4, hidden=32)
    opt = torch.optim.Adam(est.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    est.train()
    for _ in range(steps):
        z_l, x, m = _synthetic(16, gen)
        loss = F.mse_loss(est(z_l, x), m)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return est.eval()


@pytest.fixture(scope="module")
def trained_mem() -> MetricEstimator:
    return _train_estimator()


def test_estimate_correlates_with_true_cosine(trained_mem):
    z_l, x, m = _synthetic(200, torch.Generator().manual_seed(123))
    with torch.no_grad():
        pred = trained_mem(z_l, x)
    assert m.std() > 0.1  # the test set spans a real range of similarities
    corr = torch.corrcoef(torch.stack([pred, m]))[0, 1]
    assert corr > 0.9
    assert (pred - m).abs().mean() < 0.05


def test_features_and_batch_size_one():
    z = torch.randn(1, 4, 8, 8)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert mem_features(z, x).shape == (1, 3 * 4 + 3)
    est = MetricEstimator().train()
    assert est(z, x).shape == (1,)  # running standardisation works for single samples
    with pytest.raises(ValueError, match="latent channels"):
        est(torch.randn(1, 3, 8, 8), x)


def test_file_round_trip_and_errors(trained_mem, tmp_path):
    path = save_mem(trained_mem, tmp_path / "mem.safetensors")
    loaded = load_mem(path)
    z_l, x, _ = _synthetic(8, torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(z_l, x), trained_mem(z_l, x))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    with pytest.raises(WeightsError, match="not found"):
        load_mem(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="not a MEM file"):
        load_mem(tmp_path / "other.safetensors")


def test_adaptive_knob_uses_the_mem_estimate(trained_mem, tmp_path):
    path = save_mem(trained_mem, tmp_path / "mem.safetensors")
    ldg = LDGNoise(mem_weights=str(path))
    ldg.attach(from_scheduler_config(SD_SCHEDULER))
    assert ldg.parse_knob("adaptive") == "adaptive"
    assert not any(True for _ in ldg.parameters())  # the MEM is not part of the generator's state
    z_l, x, m = _synthetic(32, torch.Generator().manual_seed(4))
    ctx = NoiseContext(lq_up=x, z_lq=z_l, training=False, knob="adaptive")
    t = ldg.timesteps(ctx)
    with torch.no_grad():
        expected = ldg.timestep_for(trained_mem(z_l, x))
    assert torch.equal(t, expected)
    assert (t == ldg.timestep_for(m)).float().mean() > 0.7  # mostly the group the true metric gives
    assert len(set(t.tolist())) > 1


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step called without a Trainer
def test_mem_system_trains_only_the_estimator(make_cfg, tiny_bb):
    from lit_sr.config.build import build_generator

    g = build_generator(make_cfg("noise=ldg", "noise.m_min=0.3", "noise.m_max=0.9", "lora.vae=null"), tiny_bb)
    system = MEMSystem(g, MetricEstimator(), optimizer=partial(torch.optim.AdamW, lr=1e-2))
    system.train()
    assert not system.generator.training
    assert all(k.startswith("estimator.") for k in system.state_dict())  # the generator is not saved
    torch.manual_seed(0)
    hq = torch.rand(2, 3, 64, 64)
    batch = {"hq": hq, "lq": F.interpolate(hq, scale_factor=0.25, mode="area")}
    loss = system.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in system.generator.parameters())
    assert all(p.grad is not None for p in system.estimator.parameters())
    # the regression target is the M_L the generator's own LDG training step groups on
    z_l, z_h, _ = generator_latents(g, batch["lq"], hq)
    g.train()
    with torch.no_grad():
        out = g.step(batch["lq"], hq=hq)
    torch.testing.assert_close(latent_cosine(z_l, z_h), out.extras["latent_metric"])


@pytest.mark.slow
def test_train_py_experiment_mem_end_to_end(make_cfg, tmp_path):
    """`python train.py experiment=mem mem.generator_export=...` writes a MEM file LDG can load."""
    import train
    from lit_sr.config.build import build_generator
    from lit_sr.model.export import export_adapter

    cfg = make_cfg("noise=ldg", "noise.m_min=0.3", "noise.m_max=0.9", "lora.vae=null")
    export = export_adapter(build_generator(cfg), tmp_path / "adapter", OmegaConf.to_container(cfg, resolve=True))
    run_dir = tmp_path / "mem_run"
    train.run(["experiment=mem", f"mem.generator_export={export}", f"run_dir={run_dir}", "trainer.max_steps=2",
               "trainer.val_check_interval=2", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "data.batch_size=2",
               "data.epoch_size=8", "data.val_crop=64"])
    mem_file = run_dir / "mem.safetensors"
    assert mem_file.is_file()
    assert isinstance(load_mem(mem_file), MetricEstimator)
    metrics = (run_dir / "metrics.json").read_text()
    assert "mem_mae" in metrics
    # adaptive inference through the CLI with the MEM file swapped in
    from datamodules.imageio import save_image
    from lit_sr import infer

    save_image(torch.rand(3, 16, 16), tmp_path / "lq" / "a.png")
    args = ["--model", str(export), "--input", str(tmp_path / "lq"), "--output", str(tmp_path / "sr"),
            "--knob", "adaptive", "--set", f"noise.mem_weights={mem_file}"]
    assert infer.run(infer.parse_args(args)).written == 1
    assert infer.main(args[:-2]) == 2  # adaptive without MEM weights: a one-line error, exit status 2


def test_adaptive_inference_reports_the_timestep_of_each_image(trained_mem, make_cfg, tiny_bb, tmp_path, caplog):
    """--knob adaptive: the t the MEM chose is in each image's log line and in evaluate's per-image CSV."""
    import csv
    import logging

    from datamodules.imageio import save_image
    from lit_sr import evaluate, infer
    from lit_sr.config.build import build_generator
    from lit_sr.model.export import export_adapter

    mem_file = save_mem(trained_mem, tmp_path / "mem.safetensors")
    cfg = make_cfg("noise=ldg", "noise.m_min=0.3", "noise.m_max=0.9", f"noise.mem_weights={mem_file}")
    generator = build_generator(cfg, tiny_bb)
    model = export_adapter(generator, tmp_path / "adapter", OmegaConf.to_container(cfg))
    groups = set(generator.noise.knob_values())
    gen = torch.Generator().manual_seed(0)
    hq = {"smooth": F.interpolate(torch.rand(1, 3, 4, 4, generator=gen), size=(64, 64), mode="bilinear")[0],
          "noisy": torch.rand(3, 64, 64, generator=gen)}
    for name, img in hq.items():
        save_image(img, tmp_path / "hq" / f"{name}.png")
        save_image(F.interpolate(img[None], scale_factor=0.25, mode="area")[0], tmp_path / "lq" / f"{name}.png")
    with caplog.at_level(logging.INFO, logger="lit_sr.infer"):
        infer.run(infer.parse_args(["--model", str(model), "--input", str(tmp_path / "lq"),
                                    "--output", str(tmp_path / "sr"), "--knob", "adaptive"]))
    wrote = [r.getMessage() for r in caplog.records if r.getMessage().startswith("wrote ") and "(t=" in r.getMessage()]
    assert len(wrote) == 2
    logged = {m.split()[1].rsplit("/", 1)[-1]: int(m.rsplit("(t=", 1)[1].rstrip(")")) for m in wrote}
    assert set(logged) == {"smooth.png", "noisy.png"} and set(logged.values()) <= groups
    per_image = tmp_path / "per_image.csv"
    assert evaluate.main(["--model", str(model), "--lq-dir", str(tmp_path / "lq"), "--hq-dir", str(tmp_path / "hq"),
                          "--knobs", "adaptive", "250", "--metrics", "psnr", "--per-image", str(per_image)]) == 0
    with open(per_image, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["metric"] == "t"]
    adaptive = {r["image"]: int(r["value"]) for r in rows if r["row"] == "adaptive"}
    assert adaptive == {"noisy": logged["noisy.png"], "smooth": logged["smooth.png"]}
    assert [int(r["value"]) for r in rows if r["row"] == "250"] == [250, 250]
