"""Export a trained model's one-step path to ONNX, for ONNX Runtime (``lit_sr.infer --runtime onnx``).

    python -m lit_sr.export_onnx --model runs/x/adapter [--decoder distilled] [--encoder distilled]

The graph is :class:`lit_sr.model.one_pass.OnePass` — bicubic ×s, padding, VAE encoder, the noise
strategy's input at timestep ``t``, the denoiser with its LoRA fused, ẑ, the decoder, crop and the
model's colour fix — exported with ``torch.onnx.export(dynamo=True)`` with a dynamic batch and
image size (inputs ``lq`` (B, 3, h, w) in [0, 1], ``t`` (B,) int64, and ``noise`` (B, C, h', w')
for strategies that inject noise; output ``sr``). Beside it, a JSON file says how to feed it:
scale, the knob → ``t`` table, the noise's shape, the smallest input, and the largest difference
from PyTorch measured on a test input at export. Written by default to
``<model>/onnx/decoder-<full|distilled>_encoder-<full|distilled>.onnx`` (+ ``.json``), where
``lit_sr.infer --runtime onnx`` looks for it. Models the graph cannot hold (IFCSR endpoints, VPIM,
per-image prompts) are refused with one line.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lit_sr.cli import run_main
from lit_sr.errors import LitSRError

log = logging.getLogger("lit_sr.export_onnx")
FORMAT = "lit_sr_onnx"
PRESET_NAMES = ("fidelity", "neutral", "realism")


def default_path(model: str | Path, decoder: str = "full", encoder: str = "full") -> Path:
    """Where an export's graph for these VAE halves lives (what ``lit_sr.infer --runtime onnx`` reads)."""
    return Path(model) / "onnx" / f"decoder-{decoder}_encoder-{encoder}.onnx"


def knob_table(noise: Any) -> dict[str, Any]:
    """How a user's knob becomes the graph's ``t``: the default, named presets, whether integers are t."""
    from lit_sr.model.noise.base import NoiseContext

    def t_of(knob: Any) -> int:
        z = torch.zeros(1, 1, 1, 1)
        ctx = NoiseContext(lq_up=torch.zeros(1, 3, 1, 1), z_lq=z, training=False, knob=noise.parse_knob(knob))
        return int(noise.timesteps(ctx)[0])

    presets = {}
    for name in PRESET_NAMES:
        try:
            presets[name] = t_of(name)
        except ValueError:
            continue
    try:
        integer = noise.has_knob and isinstance(noise.parse_knob("1"), int)
    except ValueError:
        integer = False
    return {"default": t_of(None), "presets": presets, "integer": bool(integer), "has_knob": bool(noise.has_knob),
            "num_train_timesteps": int(noise.num_train_timesteps), "help": noise.knob_help()}


def export_onnx(model: str | Path, out: str | Path | None = None, decoder: str = "full", encoder: str = "full",
                overrides: list[str] | None = None, check_size: int | None = None) -> Path:
    """Write the graph of an export's model and its JSON (see the module docstring); returns the graph's path."""
    from lit_sr.config.loading import load_generator

    _check_installed()
    generator, _ = load_generator(model, list(overrides or []), decoder=decoder, encoder=encoder)
    out = Path(out) if out is not None else default_path(model, decoder, encoder)
    export_graph(generator, out, check_size, {"decoder": decoder, "encoder": encoder, "source": str(model),
                                              "overrides": list(overrides or [])}, str(model))
    return out


def _check_installed() -> None:
    try:
        import onnxruntime  # noqa: F401 - the export is checked with it
        import onnxscript  # noqa: F401 - torch's dynamo exporter needs it
    except ImportError as exc:
        raise LitSRError(f"ONNX export needs the onnx extra ({exc.name} is missing): pip install -e '.[onnx]'") from None


def export_graph(generator: torch.nn.Module, out: str | Path, check_size: int | None = None,
                 info: dict[str, Any] | None = None, what: str = "the model") -> dict[str, Any]:
    """Export ``generator``'s pass (its LoRA fused; distilled halves as attached) to ``out`` and write the JSON
    beside it; returns the JSON's content."""
    from torch.export import Dim

    from lit_sr.model.one_pass import OnePass, unsupported

    _check_installed()
    problem = unsupported(generator)
    if problem:
        raise LitSRError(f"cannot export {what} to ONNX: {problem}")
    g = generator.float().eval()
    if not g.adapters.fused["denoiser"]:
        g.adapters.fuse("denoiser")  # peft's LoRA layers as plain weights: the graph holds convolutions only
    if not g.adapters.fused["vae"]:
        g.adapters.fuse("vae")
    module = OnePass(g).eval()
    min_side = -(-g.size_multiple // g.scale)
    side = check_size or 2 * min_side
    # Batch 2 and unequal sides: torch.export specialises sizes of 1 and equal sizes it sees.
    lq = torch.rand(2, 3, side, side + min_side, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), int(knob_table(g.noise)["default"]), dtype=torch.long)
    noise = torch.randn(module.latent_shape(2, *lq.shape[-2:]), generator=torch.Generator().manual_seed(1)) \
        if module.draws_noise else None
    # The largest input: what the denoiser takes in one call (SD3's positional embeddings); larger images tile.
    limit = g.denoiser.max_latent_size
    max_side = 8192 if limit is None else limit * g.vae_scale_factor // g.scale
    batch = Dim("batch", min=1, max=64)
    height, width = Dim("height", min=min_side, max=max_side), Dim("width", min=min_side, max=max_side)
    shapes: dict[str, Any] = {"lq": {0: batch, 2: height, 3: width}, "t": {0: batch}}
    args: tuple = (lq, t)
    names = ["lq", "t"]
    if noise is not None:
        shapes["noise"] = {0: batch, 2: Dim("latent_height", min=1), 3: Dim("latent_width", min=1)}
        args += (noise,)
        names.append("noise")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        expected = module(*args)
        try:
            torch.onnx.export(module, args, str(out), dynamo=True, dynamic_shapes=shapes, input_names=names,
                              output_names=["sr"], external_data=_needs_external(module), verbose=False)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the user needs the first line
            raise LitSRError(f"torch.onnx could not export {what} ({g.denoiser.family} family): "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}") from None
    export_s = time.perf_counter() - t0
    got = run_session(load_session(out), {n: a.numpy() for n, a in zip(names, args)})
    diff = float((torch.from_numpy(got) - expected).abs().max())
    meta = {
        "format": FORMAT, "version": 1, "inputs": names, "scale": g.scale, "factor": g.vae_scale_factor,
        "latent_channels": g.vae.channels, "size_multiple": g.size_multiple, "min_lq_side": min_side,
        "max_lq_side": max_side,
        "draws_noise": module.draws_noise, "knob": knob_table(g.noise), "tile_overlap": g.tile_overlap,
        "decoder": "distilled" if g.distilled_decoder is not None else "full",
        "encoder": "distilled" if g.distilled_encoder is not None else "full",
        "color_fix": g.color_fix, "family": g.denoiser.family, "torch": torch.__version__,
        "exporter": "torch.onnx.export(dynamo=True)", "check": {"lq": list(lq.shape), "max_abs_diff": diff},
        "export_s": round(export_s, 1), **(info or {}),
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    log.info("wrote %s (%.0f s; ONNX Runtime vs PyTorch on a %dx%d batch of 2: max |diff| %.2e)", out, export_s,
             lq.shape[-1], lq.shape[-2], diff)
    return meta


def _needs_external(module: torch.nn.Module) -> bool:
    """Weights above protobuf's 2 GB limit go to a ``.onnx.data`` file beside the graph."""
    return sum(p.numel() * p.element_size() for p in module.parameters()) > 1_800_000_000


def load_session(path: str | Path, device: str = "cpu", threads: int | None = None):
    """An ONNX Runtime session (CUDA where asked for and installed, else the CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise LitSRError("--device cuda with --runtime onnx needs onnxruntime-gpu (this onnxruntime has "
                             f"{', '.join(ort.get_available_providers())})")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


def run_session(session, feeds: dict) -> Any:
    """The graph's output for ``feeds`` (only the inputs the graph declares)."""
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lit_sr.export_onnx", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="export folder (or checkpoint) of a trained model")
    p.add_argument("--out", default=None, help="graph file (default: <model>/onnx/decoder-…_encoder-….onnx)")
    p.add_argument("--decoder", default="full", help="full | distilled (the export's distilled decoder)")
    p.add_argument("--encoder", default="full", help="full | distilled (the export's distilled encoder)")
    p.add_argument("--check-size", type=int, default=None, help="LQ side of the parity check input (default: small)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. backbone.path=…")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        args = parse_args(argv)
        if not Path(args.model).is_dir() and args.out is None:
            raise LitSRError(f"--model {args.model}: not an export folder; give --out for a checkpoint")
        export_onnx(args.model, args.out, args.decoder, args.encoder, args.set, args.check_size)

    return run_main(body, (LitSRError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
