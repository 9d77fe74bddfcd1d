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
