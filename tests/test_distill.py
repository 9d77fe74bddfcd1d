"""Distilled VAE halves (experiment=distill_vae): the small networks, the regime, the export, inference with them."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lit_sr.errors import ConfigError, LitSRError, WeightsError
from lit_sr.model.distilled import DISTILLED_FILE, attach_distilled, load_distilled, save_distilled
from lit_sr.model.small_vae import SmallDecoder, SmallEncoder


def _psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 2.0) -> float:
    return 10 * math.log10(peak**2 / float((a - b).square().mean()))


@pytest.mark.parametrize("channels,factor", [(4, 8), (16, 4)])
def test_small_halves_shapes_and_tiles_that_share_statistics(channels, factor):
    """Both latent layouts; a tiled pass agrees with the untiled one because tiles share GroupNorm statistics."""
    torch.manual_seed(0)
    dec = SmallDecoder(channels, factor, width=32, depth=1, min_width=16).eval()
    enc = SmallEncoder(channels, factor, width=32, depth=1, min_width=16).eval()
    with torch.no_grad():  # trained-looking weights: the zero-initialised convs of the blocks do something
        for m in (dec, enc):
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    # Content that changes across the image, so that per-tile statistics would differ from the image's.
    z = F.interpolate(torch.randn(1, channels, 6, 8), size=(24, 40), mode="bilinear")
    size = (24 * factor, 40 * factor)
    x = (F.interpolate(torch.rand(1, 3, 3, 5), size=size, mode="bilinear") + 0.1 * torch.rand(1, 3, *size)) * 2 - 1
    with torch.no_grad():
        img, lat = dec.decode(z), enc.encode(x)
        assert img.shape == (1, 3, *size) and img.abs().max() <= 1
        assert lat.shape == (1, channels, 24, 40)
        tile, overlap = 12 * factor, 8 * factor
        # Measured: 31.9-33.3 dB shared, 21.7-23.7 (decoder) and 19.1-19.2 (encoder) with per-tile statistics.
        assert _psnr(dec.decode(z, tile, overlap), img) > 29
        assert _psnr(enc.encode(x, tile, overlap), lat, peak=float(lat.abs().max())) > 27


def test_small_halves_refuse_bad_layouts():
    with pytest.raises(ValueError, match="power of two"):
        SmallDecoder(4, 6)
    with pytest.raises(ValueError, match="norm_groups"):
        SmallDecoder(4, 8, width=24, min_width=12, norm_groups=8)
    with pytest.raises(ValueError, match="16-channel latents"):
        SmallDecoder(16, 4).check_latent(4, 8)


def test_distilled_file_round_trip_and_errors(tmp_path):
    dec, enc = SmallDecoder(4, 8, width=16, depth=1), SmallEncoder(4, 8, width=16, depth=1)
    (tmp_path / "lit_sr_export.json").write_text(json.dumps({"format": "lit_sr"}))
    (tmp_path / "README.md").write_text("# lit_sr model\n\n## Use\n\ntext\n")
    save_distilled(tmp_path, {"decoder": dec}, {"decoder": {"val": {"decoder_psnr": 30.0}}})
    path = tmp_path / DISTILLED_FILE
    loaded = load_distilled(path, "decoder")
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), dec(z))
    assert json.loads((tmp_path / "lit_sr_export.json").read_text())["distilled"]["decoder"]["arch"]["width"] == 16
    with pytest.raises(WeightsError, match="holds no distilled encoder"):
        load_distilled(path, "encoder")
    save_distilled(tmp_path, {"decoder": dec, "encoder": enc}, {})  # a second distillation replaces the section
    card = (tmp_path / "README.md").read_text()
    assert card.count("## Distilled VAE parts") == 1 and "## Use" in card and "--encoder distilled" in card
    (tmp_path / "other.safetensors").write_bytes(b"not a file")
    with pytest.raises(WeightsError, match="cannot read"):
        load_distilled(tmp_path / "other.safetensors", "decoder")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # steps called without a Trainer
def test_distill_system_learns_the_teacher_and_leaves_the_generator_alone(make_cfg, tiny_bb):
    """A few steps on one batch: the students' losses fall; the generator gets no gradient; the decoder's
    target is the full decoder's image of the generator's own ẑ, the encoder's the adapted encoder's latent."""
    from lit_sr.config.build import build_generator
    from lit_sr.systems.distill import DistillSystem

    g = build_generator(make_cfg(), tiny_bb, training=False)
    with torch.no_grad():  # a "trained" VAE-encoder LoRA: the encoder's target is the adapted encoder
        for n, p in g.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    torch.manual_seed(0)
    dec = SmallDecoder(g.vae.channels, g.vae.factor, width=32, depth=1)
    enc = SmallEncoder(g.vae.channels, g.vae.factor, width=32, depth=1)
    system = DistillSystem(g, dec, enc, lpips_weight=0.0, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    opt = system.configure_optimizers()
    assert all(k.startswith(("decoder.", "encoder.")) for k in system.state_dict())  # the generator is not saved
    hq = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    lq = F.interpolate(hq, scale_factor=0.25, mode="area")
    out, target = system.teacher(lq, None, None)
    with torch.no_grad():
        torch.testing.assert_close(target, g.vae.decode(out.z_hat))
        with g.adapters.using(vae=[]):
            base = g.vae.encode(g.model_input(out.lq_up))
        assert (out.z_lq - base).abs().max() > 1e-3  # the target latent is the LoRA-adapted encoder's

    def losses() -> dict[str, float]:
        with torch.no_grad():
            return {k: float(v) for k, v in system.student_losses(out, target).items()}

    before = losses()
    assert set(before) == {"pixel", "encoder_mse"}
    with torch.no_grad():
        assert before["pixel"] == pytest.approx(float(F.l1_loss(dec(out.z_hat), target)), rel=1e-5)
    for _ in range(40):
        opt.zero_grad()
        system.weighted(system.student_losses(out, target)).backward()
        opt.step()
    after = losses()
    assert after["pixel"] < 0.7 * before["pixel"] and after["encoder_mse"] < 0.7 * before["encoder_mse"]
    assert all(p.grad is None for p in g.parameters())


def _train_distill(make_cfg, tmp_path, backbone: str, *extra: str):
    """A trained-looking export of the ``backbone`` family and a 3-step distillation of it through train.py."""
    import train
    from lit_sr.config.build import build_generator
    from lit_sr.model.export import export_adapter

    cfg = make_cfg(f"backbone={backbone}", "noise=rgpa", "model.color_fix=wavelet")
    g = build_generator(cfg, training=False)
    export = export_adapter(g, tmp_path / "adapter", OmegaConf.to_container(cfg, resolve=True))
    run_dir = tmp_path / "distill"
    train.run(["experiment=distill_vae", f"distill.generator_export={export}",
               f"run_dir={run_dir}", "trainer.max_steps=3", "trainer.val_check_interval=3",
               "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "data.batch_size=2",
               "data.epoch_size=6", "data.val_crop=64", "distill.lpips_weight=0.05", *extra])
    return export, run_dir / "adapter"


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tiny", "tiny_sd3"])  # 4-channel UNet / 16-channel MM-DiT with a shift factor
def test_train_py_distill_vae_export_and_inference(make_cfg, tmp_path, backbone):
    """`train.py experiment=distill_vae` writes an export with the distilled parts that inference picks up,
    untiled and tiled, on both backbone families."""
    from datamodules.imageio import load_image, save_image
    from lit_sr import infer
    from lit_sr.config.loading import load_generator

    source, out = _train_distill(make_cfg, tmp_path, backbone)
    manifest = json.loads((out / "lit_sr_export.json").read_text())
    assert set(manifest["distilled"]) == {"decoder", "encoder"}
    for part in ("decoder", "encoder"):
        entry = manifest["distilled"][part]
        assert entry["flops_512"]["distilled"] < entry["flops_512"]["full"]
        assert "sr_psnr" in entry["val"]
    assert "## Distilled VAE parts" in (out / "README.md").read_text()
    # The yaml's cosine schedule is stepped by the manual-optimisation step: 3 of 3 steps end at lr 0.
    ckpt = torch.load(tmp_path / "distill" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 3
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert not (source / DISTILLED_FILE).exists()  # the generator's own export is left as it was

    g, _ = load_generator(out, decoder="distilled", encoder="distilled")
    assert isinstance(g.distilled_decoder, SmallDecoder) and isinstance(g.distilled_encoder, SmallEncoder)
    assert g.distilled_decoder.latent_channels == g.vae.channels
    full, _ = load_generator(out)
    assert full.distilled_decoder is None and full.distilled_encoder is None
    lq = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = g.encode(g.model_input(g.upsample(lq)))
        torch.testing.assert_close(z, g.distilled_encoder(g.model_input(g.upsample(lq))))
        torch.testing.assert_close(g.decode(z), g.distilled_decoder(z).clamp(-1, 1))
        assert (g.decode(z) - full.decode(z)).abs().max() > 1e-3

    save_image(torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(2)), tmp_path / "lq" / "a.png")
    outputs = {}
    for name, flags in (("full", []), ("distilled", ["--decoder", "distilled", "--encoder", "distilled"]),
                        ("tiled", ["--decoder", "distilled", "--encoder", "distilled", "--vae-tile", "64", "--tile", "16"])):
        args = ["--model", str(out), "--input", str(tmp_path / "lq"), "--output", str(tmp_path / name), *flags]
        assert infer.main(args) == 0
        outputs[name] = load_image(tmp_path / name / "a.png")
    assert outputs["distilled"].shape == outputs["full"].shape == (3, 128, 192)
    assert (outputs["distilled"] - outputs["full"]).abs().max() > 1 / 255  # the distilled parts ran
    assert _psnr(outputs["tiled"], outputs["distilled"], peak=1.0) > 30


@pytest.mark.slow
def test_distilled_inference_bad_combinations_are_one_line(make_cfg, tmp_path, capsys):
    from datamodules.imageio import save_image
    from lit_sr import infer

    source, out = _train_distill(make_cfg, tmp_path, "tiny", "distill.encoder=null")
    save_image(torch.rand(3, 16, 16), tmp_path / "lq" / "a.png")
    base = ["--input", str(tmp_path / "lq"), "--output", str(tmp_path / "sr")]

    def one_line(args: list[str], needle: str) -> None:
        capsys.readouterr()
        assert infer.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err

    one_line(["--model", str(source), *base, "--decoder", "distilled"], "has no distilled VAE parts")
    one_line(["--model", str(out), *base, "--encoder", "distilled"], "holds no distilled encoder")
    one_line(["--model", str(out), *base, "--runtime", "onnx", "--decoder", "distilled"], "export it first")
    one_line(["--model", str(out), *base, "--runtime", "onnx", "--precision", "bf16"], "--precision applies to")
    with pytest.raises(SystemExit) as exc:  # argparse: one usage line and one error line, exit 2
        infer.parse_args(["--model", str(out), *base, "--decoder", "tiny"])
    assert exc.value.code == 2
    # a distilled file for another latent layout
    save_distilled(tmp_path / "adapter", {"decoder": SmallDecoder(16, 4, width=16)}, {})
    one_line(["--model", str(tmp_path / "adapter"), *base, "--decoder", "distilled"], "16-channel latents")
    with pytest.raises(LitSRError, match="needs an export folder"):
        attach_distilled(object(), tmp_path / "model.ckpt", decoder="distilled")


def test_distill_config_errors_are_one_line(make_cfg, tmp_path):
    from lit_sr.config.compose import compose
    from lit_sr.config.systems import build_system

    with pytest.raises(ConfigError, match="missing value for 'distill.generator_export'"):
        build_system(compose(["experiment=distill_vae", "backbone=tiny"]))
    cfg = compose(["experiment=distill_vae", "backbone=tiny", f"distill.generator_export={tmp_path}",
                   "distill.decoder=null", "distill.encoder=null"])
    with pytest.raises(ConfigError, match="nothing to distil"):
        build_system(cfg)
    with pytest.raises(ConfigError, match="distill.lpips_weight must be a finite number >= 0"):
        compose(["experiment=distill_vae", "backbone=tiny", f"distill.generator_export={tmp_path}",
                 "distill.lpips_weight=-1"])
    with pytest.raises(ConfigError, match="system=distill"):
        build_system(compose(["system=distill", "backbone=tiny"]))
