"""Inference CLI: folders, skips of bad files, knob handling, tiling, colour fix, precision."""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from lit_sr import infer
from lit_sr.config.build import build_generator
from lit_sr.model.colorfix import adain, wavelet
from lit_sr.model.export import export_adapter


def _export(make_cfg, tiny_bb, path):
    cfg = make_cfg()
    export_adapter(build_generator(cfg, tiny_bb), path, OmegaConf.to_container(cfg))
    return path


def test_folder_inference_skips_bad_files(make_cfg, tiny_bb, tmp_path, caplog):
    model = _export(make_cfg, tiny_bb, tmp_path / "adapter")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray((np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)).save(src / "sub" / "a.png")
    (src / "notes.txt").write_text("not an image")
    (src / "broken.png").write_bytes(b"\x89PNG broken")
    stats = infer.run(infer.parse_args(["--model", str(model), "--input", str(src), "--output", str(tmp_path / "out"),
                                        "--tile", "8", "--color-fix", "wavelet", "--precision", "bf16"]))
    assert stats == {"written": 1, "skipped": 2}
    out = Image.open(tmp_path / "out" / "sub" / "a.png")
    assert out.size == (96, 80)


def test_cli_reports_one_line_errors(tmp_path, capsys):
    assert infer.main(["--model", str(tmp_path / "nope"), "--input", ".", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model not found") and "\n" not in err


def test_gamma_needs_endpoint_model(make_cfg, tiny_bb, tmp_path, capsys):
    model = _export(make_cfg, tiny_bb, tmp_path / "adapter")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    code = infer.main(["--model", str(model), "--input", str(tmp_path / "x.png"), "--output", str(tmp_path / "o"),
                       "--gamma", "0.5"])
    assert code == 2 and "endpoints" in capsys.readouterr().err


def test_color_fixes_match_reference_statistics():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 32, 32, generator=g) * 0.5 + 0.25
    sr = (ref + 0.2 + 0.05 * torch.randn(1, 3, 32, 32, generator=g)).clamp(0, 1)
    fixed = adain(sr, ref)
    torch.testing.assert_close(fixed.mean(dim=(2, 3)), ref.mean(dim=(2, 3)), atol=2e-3, rtol=0)
    # wavelet keeps the SR's detail but takes the reference's low frequencies (its mean colour)
    w = wavelet(sr, ref)
    assert (w.mean(dim=(2, 3)) - ref.mean(dim=(2, 3))).abs().max() < 0.02
    assert (sr.mean(dim=(2, 3)) - ref.mean(dim=(2, 3))).abs().min() > 0.15


def test_batched_folder_equals_one_by_one_and_bars_count_images_and_tiles(make_cfg, tiny_bb, tmp_path, capsys):
    """--batch-size groups consecutive equal-size images (a deterministic strategy: identical outputs);
    an image of another size or an unreadable file starts a new group; the bars count images and tiles."""
    model = _export(make_cfg, tiny_bb, tmp_path / "adapter")
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    for name, (h, w) in {"a": (16, 24), "b": (16, 24), "c": (20, 16), "d": (16, 24), "e": (16, 24)}.items():
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(src / f"{name}.png")
    (src / "c2.png").write_bytes(b"broken")
    common = ["--model", str(model), "--input", str(src), "--tile", "4", "--tile-overlap", "1"]
    one = infer.run(infer.parse_args([*common, "--output", str(tmp_path / "one"), "--progress", "never"]))
    capsys.readouterr()
    sizes = []
    real = infer.LitSRPipeline.images

    def spy(self, lq, *args, **kwargs):
        sizes.append(lq.shape[0])
        return real(self, lq, *args, **kwargs)

    infer.LitSRPipeline.images = spy
    try:
        many = infer.run(infer.parse_args([*common, "--output", str(tmp_path / "many"), "--batch-size", "2",
                                           "--progress", "always"]))
    finally:
        infer.LitSRPipeline.images = real
    assert one == many == {"written": 5, "skipped": 1}
    assert sizes == [2, 1, 2]  # a b | c (other size; c2 unreadable) | d e
    for name in "abcde":
        a = np.asarray(Image.open(tmp_path / "one" / f"{name}.png"), np.int16)
        b = np.asarray(Image.open(tmp_path / "many" / f"{name}.png"), np.int16)
        assert np.abs(a - b).max() <= 1, name  # batched float kernels may round one step differently
    err = capsys.readouterr().err
    assert "images: 100%" in err and "6/6" in err
    assert "denoiser tiles" in err  # latent 4x6 or 5x4 with tile 4: several denoiser tiles per pass


def test_tile_progress_reports_every_tile_of_each_pass():
    from lit_sr.model.tiling import tile_progress, tiled

    calls = []
    x = torch.arange(10 * 13, dtype=torch.float32).reshape(1, 1, 10, 13)
    with tile_progress(lambda label, done, total: calls.append((label, done, total))):
        out = tiled(lambda ys, xs: x[..., ys, xs], (10, 13), 4, 1, label="UNet")
        tiled(lambda ys, xs: x[..., ys, xs], (10, 13), 16, 1, label="single")  # one tile: no report
    torch.testing.assert_close(out, x)
    total = calls[0][2]
    assert calls == [("UNet", i, total) for i in range(1, total + 1)] and total == 3 * 4  # starts 0,3,6 × 0,3,6,9
