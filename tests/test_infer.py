"""Inference CLI: folders, skips of bad files, knob handling, tiling, colour fix, precision."""
from __future__ import annotations

import logging
import struct
import zlib

import numpy as np
import pytest
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
    assert (stats.written, stats.skipped, stats.failed) == (1, 1, 1)  # notes.txt skipped, broken.png failed
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
    real = infer.LitSRPipeline.run

    def spy(self, lq, *args, **kwargs):
        sizes.append(lq.shape[0])
        return real(self, lq, *args, **kwargs)

    infer.LitSRPipeline.run = spy
    try:
        many = infer.run(infer.parse_args([*common, "--output", str(tmp_path / "many"), "--batch-size", "2",
                                           "--progress", "always"]))
    finally:
        infer.LitSRPipeline.run = real
    assert one == many and (one.written, one.skipped, one.failed) == (5, 0, 1)
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


# ------------------------------------------------------------------------------ large images, bad values


def _smooth_photo(path, h: int, w: int, seed: int = 0):
    """A locally correlated image (photos are; white noise is the worst case for any tiling)."""
    small = torch.rand(1, 3, max(2, h // 4), max(2, w // 4), generator=torch.Generator().manual_seed(seed))
    img = torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(path)
    return path


def _photo(path, h: int, w: int, seed: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_large_images_tile_automatically_with_one_line_and_progress_lines_without_a_terminal(
        make_cfg, tiny_bb, tmp_path, caplog):
    """Above --auto-tile latent pixels a pass runs over tiles (one log line says so); without a
    terminal (--progress auto, stderr captured) a line per image and per tiled pass is logged."""
    model = _export(make_cfg, tiny_bb, tmp_path / "adapter")
    _smooth_photo(tmp_path / "in" / "big.png", 32, 40)  # x4: 160x128 output, 40x32 = 1280 latent pixels (f=4)
    _smooth_photo(tmp_path / "in" / "small.png", 8, 8, seed=1)  # 32x32 output: 64 latent pixels
    common = ["--model", str(model), "--input", str(tmp_path / "in")]
    with caplog.at_level(logging.INFO):
        infer.run(infer.parse_args([*common, "--output", str(tmp_path / "auto"), "--auto-tile", "1024"]))
    auto = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auto-tiling")]
    assert len(auto) == 1 and "the 160x128 output (1280 latent pixels > 1024)" in auto[0]
    assert "denoiser tiles of 32 latent pixels, VAE tiles of 128 px" in auto[0]
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("image 1/2: ") and "big.png" in m and "-> 160x128" in m for m in lines)
    assert any(m.startswith("image 2/2: ") and "small.png" in m for m in lines)
    for label in ("VAE encoder", "denoiser", "VAE decoder"):
        assert any(m.strip().startswith(f"{label}: ") and " tiles in " in m for m in lines), label
    caplog.clear()
    with caplog.at_level(logging.INFO):
        infer.run(infer.parse_args([*common, "--output", str(tmp_path / "off"), "--no-auto-tile"]))
    assert not any("auto-tiling" in r.getMessage() or " tiles in " in r.getMessage() for r in caplog.records)
    a = np.asarray(Image.open(tmp_path / "auto" / "big.png"), np.float64)
    b = np.asarray(Image.open(tmp_path / "off" / "big.png"), np.float64)
    assert a.shape == b.shape == (128, 160, 3)
    assert 10 * np.log10(255**2 / np.mean((a - b) ** 2)) > 30  # blended tiles stay close to the untiled pass
    assert np.array_equal(np.asarray(Image.open(tmp_path / "auto" / "small.png")),
                          np.asarray(Image.open(tmp_path / "off" / "small.png")))  # below the threshold: untouched


def test_the_tile_plan_follows_the_latent_and_leaves_the_users_tiles():
    from types import SimpleNamespace

    from lit_sr.autotile import auto_tiled, plan_tiles

    tiny = SimpleNamespace(vae_scale_factor=4, tile_latent=None, vae_tile=None)
    sd = SimpleNamespace(vae_scale_factor=8, tile_latent=None, vae_tile=None)
    assert plan_tiles(tiny, 512, 512, 128 * 128) is None  # 128² latent pixels: at the threshold
    plan = plan_tiles(tiny, 520, 512, 128 * 128)
    assert (plan.latent_pixels, plan.tile_latent, plan.vae_tile) == (130 * 128, 64, 256)
    assert plan_tiles(sd, 1024, 1024, 128 * 128) is None  # SD: the same latent is a 4x larger image
    assert plan_tiles(sd, 2048, 1024, 128 * 128).vae_tile == 512
    assert plan_tiles(tiny, 160, 128, 1024).tile_latent == 32  # a low threshold: tiles within it
    assert plan_tiles(tiny, 4096, 4096, None) is None
    mine = SimpleNamespace(vae_scale_factor=4, tile_latent=32, vae_tile=None)
    with auto_tiled(mine, 1024, 1024, 128 * 128) as plan:
        assert (mine.tile_latent, mine.vae_tile) == (32, 256)  # the user's UNet tile stays
    assert (mine.tile_latent, mine.vae_tile) == (32, None)  # restored after the pass


def _png_header_only(path, w: int, h: int):
    """A PNG whose header says w x h and that holds no pixel data (cheap to make, refused by size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_an_image_whose_output_is_too_large_is_refused_with_one_line_before_decoding(
        make_cfg, tiny_bb, tmp_path, capsys, monkeypatch):
    model = _export(make_cfg, tiny_bb, tmp_path / "adapter")
    big = _png_header_only(tmp_path / "in" / "huge.png", 12000, 12000)  # x4: 48000x48000, 27.6 GB to upsample
    decoded = []
    real = infer.load_image
    monkeypatch.setattr(infer, "load_image", lambda path, *a, **k: decoded.append(path) or real(path, *a, **k))
    code = infer.main(["--model", str(model), "--input", str(big), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and decoded == []
    assert err[-1].startswith("error: 1 image(s) not super-resolved, the first: ")
    assert "48000x48000 output (2304 MP), above the limit of 33.6 MP (--max-output-pixels" in err[-1]
    # a folder: the others are written, the large one is a counted, logged failure, and the exit status says so
    _photo(tmp_path / "in" / "ok.png", 8, 8)
    code = infer.main(["--model", str(model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out2"),
                       "--max-output-pixels", "100000"])
    assert code == 2 and (tmp_path / "out2" / "ok.png").exists() and not (tmp_path / "out2" / "huge.png").exists()
    assert "wrote 1 file(s)" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--tile", "0"], "--tile must be a positive integer, got 0"),
    (["--tile", "-5"], "--tile must be a positive integer, got -5"),
    (["--vae-tile", "0"], "--vae-tile must be a positive integer, got 0"),
    (["--vae-tile", "3"], "model.vae_tile=3 must be a multiple of the VAE factor 4"),
    (["--tile-overlap", "-1"], "--tile-overlap must be a non-negative integer, got -1"),
    (["--auto-tile", "0"], "--auto-tile must be a positive integer, got 0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
])
def test_bad_tile_values_are_one_line_and_exit_2(make_cfg, tiny_bb, tmp_path, capsys, flags, message):
    model = _export(make_cfg, tiny_bb, tmp_path / "adapter")
    photo = _photo(tmp_path / "in" / "a.png", 8, 8)
    assert infer.main(["--model", str(model), "--input", str(photo), "--output", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {message}" or (err.startswith("error: ") and message in err and "\n" not in err), err


def test_outputs_never_replace_input_files(make_cfg, tiny_bb, tmp_path, capsys):
    model = _export(make_cfg, tiny_bb, tmp_path / "adapter")
    photo = _photo(tmp_path / "photos" / "a.png", 8, 8)
    before = photo.read_bytes()
    for extra in ([], ["--overwrite"]):
        code = infer.main(["--model", str(model), "--input", str(photo.parent), "--output", str(photo.parent), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err == f"error: {photo} is an input file: refusing to write over it; use another --output"
        assert photo.read_bytes() == before
    assert infer.main(["--model", str(model), "--input", str(photo), "--output", str(photo.parent / "sr")]) == 0


def test_fused_models_apply_the_adapter_weights(make_cfg, tiny_bb, tmp_path):
    """--fuse merges the LoRA at the weights --adapter-weights gives (not at 1 regardless)."""
    from test_pipeline import _trained_export

    model, _ = _trained_export(make_cfg, tiny_bb, tmp_path / "m", [])
    photo = _photo(tmp_path / "in" / "a.png", 12, 16, seed=4)
    outs = {}
    for name, flags in {"unfused0": ["--adapter-weights", "main=0"], "fused0": ["--fuse", "--adapter-weights", "main=0"],
                        "fused1": ["--fuse", "--adapter-weights", "main=1"], "fused05": ["--fuse", "--adapter-weights",
                                                                                         "main=0.5"]}.items():
        assert infer.main(["--model", str(model), "--input", str(photo), "--output", str(tmp_path / name), *flags]) == 0
        outs[name] = np.asarray(Image.open(tmp_path / name / "a.png"), np.int16)
    assert np.abs(outs["fused0"] - outs["unfused0"]).max() <= 1
    assert np.abs(outs["fused1"] - outs["fused0"]).max() > 2 and np.abs(outs["fused05"] - outs["fused0"]).max() > 0
    # weights set on a fused pipeline re-merge the adapters at the new weights
    from lit_sr.pipeline import LitSRPipeline

    lq = torch.from_numpy(np.asarray(Image.open(photo)).transpose(2, 0, 1).astype(np.float32) / 255)[None]
    pipe = LitSRPipeline.from_pretrained(model, device="cpu", fuse=True)
    pipe.set_adapters(["main"], [0.0])
    assert np.abs(pipe.images(lq)[0][""].astype(np.int16) - outs["unfused0"]).max() <= 1
