"""LDG (RCOD): groups from the latent cosine similarity, boundaries, presets, x0 conversion."""
from __future__ import annotations

import pytest
import torch

from lit_sr.errors import ConfigError
from lit_sr.model.noise.base import NoiseContext
from lit_sr.model.noise.ldg import LDGNoise, latent_cosine
from lit_sr.model.parameterisation import SD_SCHEDULER, from_scheduler_config


def _ldg(**kwargs) -> LDGNoise:
    noise = LDGNoise(**kwargs)
    noise.attach(from_scheduler_config(SD_SCHEDULER))
    return noise


def _pair_with_cosine(c: float, shape=(4, 16, 16), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_L, z_H) with cos(z_L, z_H) = c (up to rounding), built from two orthonormal directions."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(shape, generator=g, dtype=torch.float64).flatten()
    v = torch.randn(shape, generator=g, dtype=torch.float64).flatten()
    u = u / u.norm()
    v = v - (v @ u) * u
    v = v / v.norm()
    z_l = (c * u + (1 - c * c) ** 0.5 * v) * 37.0  # cosine ignores scale
    return z_l.view(1, *shape).float(), (u * 5.0).view(1, *shape).float()


def _formula(m: float, n: int = 3, k: int = 250, lo: float = 0.3, hi: float = 0.9) -> int:
    """Paper eq. 5 with the documented clamp of the group index to [0, n-1]."""
    import math

    g = math.floor(n * (m - lo) / (hi - lo) + 1e-9)
    return k * (n - min(max(g, 0), n - 1))


@pytest.mark.parametrize("c", [-0.2, 0.1, 0.35, 0.42, 0.55, 0.61, 0.68, 0.72, 0.8, 0.88, 0.95, 0.999])
def test_synthetic_latents_land_in_the_formula_group(c):
    ldg = _ldg()
    z_l, z_h = _pair_with_cosine(c, seed=int(c * 1000) % 97)
    assert latent_cosine(z_l, z_h).item() == pytest.approx(c, abs=1e-5)
    ctx = NoiseContext(lq_up=torch.zeros(1, 3, 64, 64), z_lq=z_l, z_hq=z_h, training=True)
    assert ldg.timesteps(ctx).item() == _formula(c)
    assert ctx.extras["latent_metric"].item() == pytest.approx(c, abs=1e-5)


def test_group_boundaries_formula():
    ldg = _ldg()
    # float32 inputs, as latents are: 0.7 is stored as 0.69999999; the edge tolerance keeps it in its group
    m = torch.tensor([-1.0, 0.0, 0.29, 0.3, 0.4999, 0.5, 0.6999, 0.7, 0.8999, 0.9, 0.95, 1.0])
    expected = [750, 750, 750, 750, 750, 500, 500, 250, 250, 250, 250, 250]
    assert ldg.timestep_for(m).tolist() == expected
    assert ldg.group_index(m).tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    # M_L == M_max would be t = 0 under the raw formula: clamped to the top group (t = k)
    assert ldg.timestep_for(torch.tensor([0.9], dtype=torch.float64)).item() == 250


def test_group_boundaries_reference_thresholds():
    ldg = _ldg(grouping="thresholds")
    m = torch.tensor([0.0, 0.4999, 0.5, 0.6999, 0.7, 1.0])
    assert ldg.timestep_for(m).tolist() == [749, 749, 499, 499, 249, 249]
    assert ldg.knob_values() == [249, 499, 749]
    assert [ldg.parse_knob(p) for p in ("fidelity", "neutral", "realism")] == [249, 499, 749]


def test_formula_with_other_n_k():
    ldg = _ldg(n=4, k=200, m_min=0.2, m_max=1.0)
    m = torch.tensor([0.1, 0.2, 0.39, 0.4, 0.6, 0.8, 1.0])
    assert ldg.timestep_for(m).tolist() == [800, 800, 800, 600, 400, 200, 200]
    assert ldg.knob_values() == [200, 400, 600, 800]


def test_presets_and_knob_parsing():
    ldg = _ldg()
    assert [ldg.parse_knob(p) for p in ("fidelity", "neutral", "realism")] == [250, 500, 750]
    assert ldg.parse_knob(" Realism ") == 750
    assert ldg.parse_knob(None) == 500  # default_knob: neutral
    assert ldg.parse_knob("321") == 321 and ldg.parse_knob(ldg.parse_knob("fidelity")) == 250
    assert ldg.knob_values() == [250, 500, 750]
    with pytest.raises(ValueError, match="mem_weights"):
        ldg.parse_knob("adaptive")
    for bad in ("sharp", "1000", -3, 1.5):
        with pytest.raises(ValueError, match="ldg"):
            ldg.parse_knob(bad)
    ctx = NoiseContext(lq_up=torch.zeros(2, 3, 32, 32), z_lq=torch.zeros(2, 4, 8, 8), training=False, knob="fidelity")
    assert ldg.timesteps(ctx).tolist() == [250, 250]


def test_denoiser_sees_the_clean_latent_and_x0_conversion():
    ldg = _ldg()
    z = torch.randn(3, 4, 8, 8)
    ctx = NoiseContext(lq_up=torch.zeros(3, 3, 32, 32), z_lq=z, training=False)
    t = torch.tensor([250, 500, 750])
    z_in = ldg.denoiser_input(ctx, t)
    assert z_in is z
    eps = torch.randn_like(z)
    a = ldg.parameterisation.alpha_bar(t)[:, None, None, None]
    torch.testing.assert_close(ldg.to_x0(ctx, t, z_in, eps), (z - (1 - a).sqrt() * eps) / a.sqrt())
    # the reference code's fixed-ᾱ quirk: the same ᾱ for every t
    quirk = _ldg(fixed_alpha_x0=0.7537)
    x0 = quirk.to_x0(ctx, t, z_in, eps)
    torch.testing.assert_close(x0, (z - 0.2463 ** 0.5 * eps) / 0.7537 ** 0.5)


def test_generator_trains_at_the_group_of_its_own_latents(make_cfg, tiny_bb):
    from lit_sr.config.build import build_generator

    g = build_generator(make_cfg("noise=ldg", "noise.m_min=0.3", "noise.m_max=0.9"), tiny_bb).train()
    torch.manual_seed(0)
    hq = torch.rand(3, 3, 64, 64)
    lq = torch.nn.functional.interpolate(hq, scale_factor=0.25, mode="area")
    lq[2] = torch.rand(3, 16, 16)  # one badly "degraded" input: low similarity
    with torch.no_grad():
        out = g.step(lq, hq=hq)
    metric = latent_cosine(out.z_lq, out.z_hq)
    torch.testing.assert_close(out.extras["latent_metric"], metric)
    assert out.t.tolist() == g.noise.timestep_for(metric).tolist()
    with pytest.raises(ValueError, match="HQ latent"):
        g.step(lq)  # training without the target cannot group


def test_config_errors_are_one_line(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="default_knob=adaptive needs noise.mem_weights"):
        make_cfg("noise=ldg", "noise.default_knob=adaptive")
    with pytest.raises(ConfigError, match="MEM file not found") as exc:
        make_cfg("noise=ldg", f"noise.mem_weights={tmp_path / 'nope.safetensors'}")
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="grouping"):
        LDGNoise(grouping="quantiles")
    with pytest.raises(ValueError, match="group_timesteps"):
        LDGNoise(grouping="thresholds", thresholds=[0.5], group_timesteps=[749, 499, 249])


@pytest.mark.parametrize("encoder", ["adapted", "base"])
def test_hq_latent_comes_from_the_configured_encoder_and_aligns_at_odd_sizes(make_cfg, tiny_bb, encoder):
    from lit_sr.config.build import build_generator

    g = build_generator(make_cfg("noise=ldg", "noise.m_min=0.3", "noise.m_max=0.9", f"noise.hq_encoder={encoder}"), tiny_bb).train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking VAE LoRA, so the two encoders differ
        for name, p in g.vae.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    hq = torch.rand(2, 3, 60, 68, generator=gen)  # not a multiple of the size the VAE/UNet need
    lq = torch.nn.functional.interpolate(hq, scale_factor=0.25, mode="area")
    with torch.no_grad():
        out = g.step(lq, hq=hq)
        y = torch.nn.functional.pad(hq * 2 - 1, (0, (-68) % g.size_multiple, 0, (-60) % g.size_multiple), mode="reflect")
        adapted = g.encode(y)
        with g.adapters.using(vae=[]):
            base = g.encode(y)
    assert out.z_hq.shape == out.z_lq.shape
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(out.z_hq, adapted if encoder == "adapted" else base)
    with pytest.raises(ConfigError, match="hq_encoder"):
        make_cfg("noise=ldg", "noise.hq_encoder=other")


def test_calibration_takes_min_max_or_equal_population_edges(caplog):
    """m_min/m_max: auto are the data's extremes; quantile edges give every group a third of the data;
    fixed edges far from a bunched-up distribution starve two groups, and the epoch report says so."""
    g = torch.Generator().manual_seed(0)
    m = 1 - torch.rand(3000, generator=g, dtype=torch.float64) ** 3 * 0.2  # bunched near 1, like the tiny default
    auto = _ldg(m_min="auto", m_max="auto")
    assert auto.needs_calibration
    with pytest.raises(RuntimeError, match="not calibrated"):
        auto.group_index(m)
    assert auto.calibrate(m) == {"m_min": float(m.min()), "m_max": float(m.max())} and not auto.needs_calibration
    assert auto.group_edges() == pytest.approx([float(m.min()) + i * float(m.max() - m.min()) / 3 for i in (1, 2)])

    quant = _ldg(grouping="quantile")
    values = quant.calibrate(m)
    shares = torch.bincount(quant.group_index(m), minlength=3).double() / m.numel()
    assert shares.tolist() == pytest.approx([1 / 3] * 3, abs=2e-3) and len(values["edges"]) == 2
    assert _ldg(grouping="quantile", edges=values["edges"]).group_index(m).tolist() == quant.group_index(m).tolist()

    fixed = _ldg(m_min=0.3, m_max=0.9)
    ctx = NoiseContext(lq_up=torch.zeros(1), z_lq=torch.zeros(1), training=True)
    for value in m[:100]:  # training passes count their groups
        z_l, z_h = _pair_with_cosine(float(value))
        fixed.timesteps(NoiseContext(lq_up=ctx.lq_up, z_lq=z_l, training=True, z_hq=z_h))
    counts = fixed.pop_training_counts()
    assert counts == {"group_t750": 0, "group_t500": 0, "group_t250": 100}
    assert fixed.pop_training_counts()["group_t250"] == 0  # reset after reading
    with caplog.at_level("WARNING"):
        shares = fixed.report_training_counts(counts)
    assert shares == {"group_t750": 0.0, "group_t500": 0.0, "group_t250": 1.0}
    assert "t=750 (0.0%), t=500 (0.0%)" in caplog.text and "grouping=quantile" in caplog.text


@pytest.mark.slow
def test_training_calibrates_once_caches_exports_and_resumes_with_the_same_groups(tmp_path, caplog):
    import csv

    from omegaconf import OmegaConf

    import train

    common = ["noise=ldg", "noise.grouping=quantile", "trainer.enable_progress_bar=false", "data.epoch_size=8",
              "data.batch_size=2", "val.metrics=[psnr]", "trainer.log_every_n_steps=1", "val.num_sample_images=0"]
    with caplog.at_level("INFO", logger="lit_sr.systems.calibration"):
        train.run([*common, f"run_dir={tmp_path / 'a'}", "trainer.max_steps=4", "trainer.val_check_interval=4"])
    assert "noise calibration over 8 training samples" in caplog.text
    edges = list(OmegaConf.load(tmp_path / "a" / "adapter" / "config.yaml").noise.edges)
    assert len(edges) == 2 and edges == sorted(edges)
    with open(tmp_path / "a" / "csv" / "metrics.csv") as f:
        shares = [float(r["noise/group_t250"]) for r in csv.DictReader(f) if r.get("noise/group_t250")]
    assert shares  # logged at the epoch end

    caplog.clear()
    with caplog.at_level("INFO", logger="lit_sr.systems.calibration"):  # the same data: values from the cache
        train.run([*common, f"run_dir={tmp_path / 'b'}", "trainer.max_steps=2", "trainer.val_check_interval=2"])
    assert "cached training-sample values" in caplog.text
    assert list(OmegaConf.load(tmp_path / "b" / "adapter" / "config.yaml").noise.edges) == edges

    caplog.clear()
    with caplog.at_level("INFO", logger="lit_sr.systems.calibration"):  # a resume restores, never recomputes
        train.run([*common, f"run_dir={tmp_path / 'a'}", "trainer.max_steps=6", "trainer.val_check_interval=2",
                   "ckpt_path=last"])
    assert "noise calibration" not in caplog.text
    assert list(OmegaConf.load(tmp_path / "a" / "adapter" / "config.yaml").noise.edges) == edges


def test_ldg_groups_map_to_sigma_on_flow():
    """LDG's groups t ∈ {250, 500, 750} are σ ≈ 0.50 / 0.75 / 0.90 at SD3's shift 3; ẑ = z_L − σ_t·v̂."""
    from lit_sr.model.parameterisation import FlowMatching

    param = FlowMatching(1000, 3.0)
    ldg = _ldg()
    ldg.attach(param)
    t = ldg.timestep_for(torch.tensor([0.35, 0.6, 0.85]))
    assert t.tolist() == [750, 500, 250]
    torch.testing.assert_close(param.sigma(t), torch.tensor([0.9005, 0.7507, 0.5013]), atol=2e-4, rtol=0)
    z, v = torch.randn(3, 16, 4, 4), torch.randn(3, 16, 4, 4)
    ctx = NoiseContext(lq_up=torch.zeros(3, 3, 16, 16), z_lq=z, training=False)
    torch.testing.assert_close(ldg.to_x0(ctx, t, ldg.denoiser_input(ctx, t), v), z - param.sigma(t)[:, None, None, None] * v)
    quirk = _ldg(fixed_alpha_x0=0.7537)
    with pytest.raises(ValueError, match="fixed_alpha_x0 is the reference code's ε-prediction shortcut"):
        quirk.attach(param)
