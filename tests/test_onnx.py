"""The ONNX one-step graph: parity with PyTorch, dynamic size and batch, the knob as an input, tiling, the CLI."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime, onnxscript) is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (onnx, onnxruntime, onnxscript) is not installed")

from lit_sr.errors import LitSRError  # noqa: E402
from lit_sr.export_onnx import default_path, export_onnx  # noqa: E402
from lit_sr.metrics.sweep import seeded  # noqa: E402
from lit_sr.model.one_pass import OnePass  # noqa: E402
from lit_sr.onnx_pipeline import OnnxPipeline  # noqa: E402
from lit_sr.pipeline import LitSRPipeline  # noqa: E402


def _perturbed(g):
    """Trained-looking adapters and distilled halves (LoRA B ≠ 0, residual blocks ≠ identity)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in g.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return g


def _export(tmp, overrides: tuple[str, ...], distilled: bool = False):
    from lit_sr.config.build import build_generator
    from lit_sr.config.compose import compose
    from lit_sr.model.distilled import save_distilled
    from lit_sr.model.export import export_adapter
    from lit_sr.model.small_vae import SmallDecoder, SmallEncoder

    cfg = compose(["callbacks=default", *overrides])
    g = _perturbed(build_generator(cfg, training=False).eval())
    folder = export_adapter(g, tmp / "adapter", OmegaConf.to_container(cfg, resolve=True))
    if distilled:
        torch.manual_seed(0)
        parts = {"decoder": SmallDecoder(g.vae.channels, g.vae.factor, width=16, depth=1),
                 "encoder": SmallEncoder(g.vae.channels, g.vae.factor, width=16, depth=1)}
        with torch.no_grad():
            for m in parts.values():
                for p in m.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
        save_distilled(folder, parts, {})
    return folder


@pytest.fixture(scope="module")
def unet_export(tmp_path_factory):
    """The UNet family with RGPA (a noise input) and the wavelet colour fix, full VAE, exported once."""
    tmp = tmp_path_factory.mktemp("onnx_unet")
    folder = _export(tmp, ("backbone=tiny", "noise=rgpa", "model.color_fix=wavelet"))
    return folder, export_onnx(folder)


def _torch_sr(pipe: LitSRPipeline, lq: torch.Tensor, knob, seed: int = 0) -> torch.Tensor:
    with torch.no_grad(), seeded(seed, torch.device("cpu")):
        return pipe.generator.step(lq, knob=knob).sr


@pytest.mark.slow
def test_onnx_graph_matches_pytorch_at_any_size_batch_and_knob(unet_export):
    folder, path = unet_export
    assert path == default_path(folder) and path.is_file()
    ox = OnnxPipeline(path, threads=1, auto_tile=None)
    assert ox.meta["check"]["max_abs_diff"] < 1e-3 and ox.meta["draws_noise"]
    pipe = LitSRPipeline.from_pretrained(folder, device="cpu", auto_tile=None)
    gen = torch.Generator().manual_seed(3)
    for shape in ((1, 3, 37, 50), (2, 3, 24, 24), (1, 3, 64, 40)):  # not multiples of the size multiple, batch 2
        lq = torch.rand(shape, generator=gen)
        for knob in (None, 200, "50"):
            onnx_sr = ox.sr(lq, ox.parse_knob(knob), seed=0)
            assert onnx_sr.shape == (shape[0], 3, shape[2] * 4, shape[3] * 4)
            diff = float((onnx_sr - _torch_sr(pipe, lq, knob)).abs().max())
            assert diff < 1e-3, (shape, knob, diff)
    a, b = (ox.sr(lq, ox.parse_knob(k), seed=0) for k in (50, 300))
    assert (a - b).abs().max() > 1e-3  # t really is an input
    with pytest.raises(ValueError, match="outside the valid range"):
        ox.parse_knob(5000)
    side = ox.meta["min_lq_side"] - 1  # below one size multiple of output the graph's reflect padding cannot work
    assert side >= 1
    with pytest.raises(LitSRError, match="at least"):
        ox.sr(torch.rand(1, 3, side, side + 8), 50)


@pytest.mark.slow
def test_onnx_tiling_runs_the_graph_per_tile_like_pytorch(unet_export):
    """Whole-pass tiles: the same tiles through ONNX Runtime and through the PyTorch module agree; the blend
    stays close to the untiled image."""
    folder, path = unet_export
    ox = OnnxPipeline(path, threads=1, tile=16, tile_overlap=4, auto_tile=None)
    lq = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(5))
    tiled = ox.sr(lq, 50, seed=0)
    pipe = LitSRPipeline.from_pretrained(folder, device="cpu", fuse=True)
    pipe.generator.adapters.fuse("vae")
    module = OnePass(pipe.generator).eval()
    calls = []

    def torch_graph(piece, t, noise):
        calls.append(tuple(piece.shape))
        with torch.no_grad():
            return module(piece, torch.full((piece.shape[0],), t, dtype=torch.long), noise)

    ox._graph = torch_graph
    reference = ox.sr(lq, 50, seed=0)
    assert len(calls) > 1 and max(c[-1] for c in calls) < lq.shape[-1]  # really tiled
    assert float((tiled - reference).abs().max()) < 1e-3
    ox.tile = None
    whole = ox.sr(lq, 50, seed=0)
    assert 10 * math.log10(1 / float((tiled - whole).square().mean())) > 25


@pytest.mark.slow
def test_infer_runtime_onnx_with_distilled_parts_equals_torch(tmp_path, capsys):
    """`python -m lit_sr.export_onnx` then `lit_sr.infer --runtime onnx` gives the PyTorch runtime's files."""
    from datamodules.imageio import load_image, save_image
    from lit_sr import export_onnx as cli
    from lit_sr import infer

    folder = _export(tmp_path, ("backbone=tiny", "noise=rgpa", "model.color_fix=wavelet"), distilled=True)
    save_image(torch.rand(3, 28, 36, generator=torch.Generator().manual_seed(1)), tmp_path / "lq" / "a.png")
    flags = ["--decoder", "distilled", "--encoder", "distilled"]
    common = ["--model", str(folder), "--input", str(tmp_path / "lq"), "--knob", "100", *flags]
    capsys.readouterr()
    assert infer.main([*common, "--output", str(tmp_path / "x"), "--runtime", "onnx"]) == 2
    assert "python -m lit_sr.export_onnx" in capsys.readouterr().err
    assert cli.main(["--model", str(folder), *flags]) == 0
    assert default_path(folder, "distilled", "distilled").is_file()
    assert infer.main([*common, "--output", str(tmp_path / "torch")]) == 0
    assert infer.main([*common, "--output", str(tmp_path / "onnx"), "--runtime", "onnx"]) == 0
    a, b = load_image(tmp_path / "torch" / "a.png"), load_image(tmp_path / "onnx" / "a.png")
    assert a.shape == (3, 112, 144) and float((a - b).abs().max()) <= 1 / 255 + 1e-6
    assert infer.main([*common, "--output", str(tmp_path / "tiled"), "--runtime", "onnx", "--tile", "16"]) == 0
    assert load_image(tmp_path / "tiled" / "a.png").shape == a.shape


@pytest.mark.slow
def test_onnx_export_of_the_mmdit_family(tmp_path):
    """SD3's joint attention and flow matching export too; parity at two sizes."""
    folder = _export(tmp_path, ("backbone=tiny_sd3", "noise=rgpa"))
    ox = OnnxPipeline(export_onnx(folder), threads=1, auto_tile=None)
    pipe = LitSRPipeline.from_pretrained(folder, device="cpu", auto_tile=None)
    for shape in ((1, 3, 12, 20), (2, 3, 16, 8)):
        lq = torch.rand(shape, generator=torch.Generator().manual_seed(2))
        assert float((ox.sr(lq, ox.parse_knob(None), seed=0) - _torch_sr(pipe, lq, None)).abs().max()) < 1e-3


def test_models_a_graph_cannot_hold_are_refused_with_one_line(make_cfg, tiny_bb):
    from lit_sr.config.build import build_generator
    from lit_sr.export_onnx import export_graph

    endpoints = build_generator(make_cfg("experiment=ifcsr", "backbone=tiny"), tiny_bb, training=False)
    with pytest.raises(LitSRError, match="endpoint .IFCSR. models .* not supported"):
        export_graph(endpoints, "unused.onnx")
