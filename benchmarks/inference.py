"""One-step inference at SD-2.1-base size on the CPU: what each speed option buys, and VAE tiling memory.

Parts (``--parts``, default all):

* ``tiny``: the tiny backbone, fp32, 128² → 512² (a smoke number; seconds);
* ``speed``: an SD-2.1-base-sized generator built the project's way — a random-weight diffusers
  folder from ``python -m lit_sr.make_backbone --arch sd21-base`` (cached under
  ``$LIT_SR_CACHE/sd21-random-bench``, built on first use), loaded through ``backbone=sd21``,
  ``experiment=osediff`` (LoRA rank 4 on the UNet and the VAE encoder, text conditioning) and
  ``build_generator``, run by :class:`~lit_sr.pipeline.LitSRPipeline` (the code ``lit_sr.infer``
  runs). The baseline is a naive diffusers-style path: fp32, unfused peft LoRA, diffusers'
  default ``AttnProcessor`` (explicit softmax) on UNet and VAE, contiguous (NCHW) tensors, eager.
  Each optimisation alone and all combined: SDPA (``AttnProcessor2_0``), fused LoRA
  (``--fuse``), bf16 autocast (``--precision bf16``), channels-last (``--channels-last``),
  ``torch.compile`` (``--compile inductor``; in a child process with a time limit, reported as
  skipped when it does not finish). Median of ``--repeats`` after a warm-up, at ``--size`` LQ
  (×4 output; default 64² → 256² to keep one CPU core's run short);
* ``speed-sd35``: the same options on an SD3.5-medium-shaped generator (MM-DiT at its published
  width with ``--sd35-layers`` of its 24 blocks, 16-channel VAE, CLIP-L + CLIP-G at 2 layers;
  random weights built in memory), ``backbone=tiny_sd3``'s config with ``experiment=osediff``.
  Its naive baseline keeps diffusers' joint-attention processor (SDPA; diffusers has no
  explicit-softmax one for joint attention), so the SDPA row is left out;
* ``fast``: the same SD-2.1-base generator (``--size`` LQ) in one run: naive, today's fast path
  (SDPA + fused LoRA + bf16 + channels-last), + a distilled decoder, + a distilled encoder (the
  small VAE halves of :mod:`lit_sr.model.small_vae` at ``SD_DISTILLED`` widths, random weights:
  their speed does not depend on what they learnt), and the fused fp32 pass with both distilled
  halves exported to ONNX (``torch.onnx`` dynamo exporter) and run by ONNX Runtime on the same
  threads; time ratios against naive, and the analytic FLOPs of each part (encoder, denoiser,
  decoder; full vs distilled) at this size and at 512² output (``lit_sr.model.flops``);
* ``fast-4k``: peak memory of the distilled decoder at a 3840×2160 output, untiled and tiled
  (``vae_tile=512``), fp32 and bf16 autocast, traced with fake tensors beside the full decoder's
  (:mod:`lit_sr.model.tracing`);
* ``vae-fake``: peak memory of the SD-size VAE encoder + decoder (``OneStepSR.encode`` and
  ``decode``, no gradient) at 512², 2048² and 4096² output, untiled vs tiled
  (``vae_tile=512``, default overlap; one tiled column per ``--vae-tile-stats`` size, the size of
  the downscaled copy whose GroupNorm statistics every tile uses), traced with fake tensors (:mod:`lit_sr.model.tracing`;
  live tensors, what ``torch.cuda.max_memory_allocated`` counts) in fp32 and under bf16 autocast;
* ``vae-real``: the same with real tensors and the real-width VAE (random weights) at growing
  sizes (``--real-sizes``, default 256², 512², 768²) with a smaller tile (``--real-tile``, 256,
  overlap 64, statistics from a copy of at most ``--real-stats`` px, default the tile) so that
  tiling starts inside the range: the tiled peak stays flat, the untiled one grows with the area.

Prints tables and writes JSON (``--out``, default benchmarks/results/inference.json). Quote
ratios from one run; absolute times depend on the machine and its load.

    python benchmarks/inference.py [--parts tiny speed fast fast-4k vae-fake vae-real] [--size 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB, GB = 2**20, 1e9
PARTS = ("tiny", "speed", "fast", "fast-4k", "speed-sd35", "vae-fake", "vae-real")
FAST = {"sdpa", "fuse", "bf16", "channels_last"}  # today's fast path (every option but compile)
# The distilled halves' widths at SD size (docs/inference.md; distill.decoder.* / distill.encoder.*).
SD_DISTILLED = {"decoder": {"width": 128, "depth": 2, "min_width": 32}, "encoder": {"width": 64, "depth": 2, "min_width": 16}}
SINGLE = ("sdpa", "fuse", "bf16", "channels_last", "compile")
COMPILE_BACKEND = "inductor"  # gpu.py --dry-run: aot_eager (the same wrapping, no code generation)


# ---------------------------------------------------------------------------------------- building
def random_sd21_dir(name: str = "sd21-random-bench", *flags: str, expect: str = "model_index.json") -> Path:
    """A cached random-weight SD-2.1-base folder (``make_backbone`` with ``flags``; built once, ~1–2 min).

    Default: 2-layer text tower (``--text-layers 2``, ~3.9 GB), enough for inference timing.
    ``expect``: a path inside the folder that must exist (else it is rebuilt, e.g. ``image_encoder``).
    """
    flags = flags or ("--text-layers", "2")
    cache = Path(os.environ.get("LIT_SR_CACHE", ROOT / ".cache" / "lit_sr"))
    path = cache / name
    if not (path / "model_index.json").exists() or not (path / expect).exists():
        print(f"building the random SD-2.1-base folder {path} (once)", flush=True)
        if path.exists():
            import shutil

            shutil.rmtree(path)
        subprocess.run([sys.executable, "-m", "lit_sr.make_backbone", "--arch", "sd21-base", "--out", str(path),
                        *flags], check=True, cwd=ROOT)
    return path


def sd21_pipeline():
    """The osediff-preset generator on the random SD-2.1 folder, in a LitSRPipeline (fp32, CPU)."""
    from lit_sr.config.build import build_generator
    from lit_sr.config.compose import compose
    from lit_sr.pipeline import LitSRPipeline

    cfg = compose(["experiment=osediff", "backbone=sd21", f"backbone.path={random_sd21_dir()}"])
    torch.manual_seed(0)
    generator = build_generator(cfg, training=False)
    return LitSRPipeline(generator, cfg, "cpu", "fp32")


def set_attention(pipe, kind: str) -> None:
    """``naive``: diffusers' default ``AttnProcessor`` (explicit softmax); ``sdpa``: ``AttnProcessor2_0``.
    An MM-DiT keeps its joint-attention processor (only its VAE switches)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    modules = [pipe.generator.vae.net]
    if pipe.generator.denoiser.family == "unet":
        modules.append(pipe.generator.denoiser.net)
    for module in modules:
        module.set_attn_processor(AttnProcessor() if kind == "naive" else AttnProcessor2_0())


def set_fused(pipe, fused: bool) -> None:
    adapters = pipe.generator.adapters
    if fused and not adapters.fused["denoiser"]:
        pipe.fuse()
    elif not fused and adapters.fused["denoiser"]:
        adapters.unfuse("denoiser")


def set_channels_last(pipe, on: bool) -> None:
    fmt = torch.channels_last if on else torch.contiguous_format
    for module in (pipe.generator.denoiser, pipe.generator.vae):
        module.to(memory_format=fmt)


def set_compiled(pipe, on: bool) -> None:
    if on:
        pipe.compile(COMPILE_BACKEND)
        return
    for module in (pipe.generator.denoiser.net, pipe.generator.vae.decoder):
        module.__dict__.pop("forward", None)  # back to the class's forward


def configure(pipe, opts: set[str]) -> None:
    set_attention(pipe, "sdpa" if "sdpa" in opts else "naive")
    set_fused(pipe, "fuse" in opts)
    set_channels_last(pipe, "channels_last" in opts)
    set_compiled(pipe, "compile" in opts)
    pipe.dtype = torch.bfloat16 if "bf16" in opts else None


def time_pipe(pipe, lq: torch.Tensor, repeats: int) -> dict:
    t0 = time.perf_counter()
    pipe.images(lq, seed=0)  # warm-up (and the compile, where compiled)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipe.images(lq, seed=0)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times, "warmup_s": warm}


def config_name(opts) -> str:
    return "+".join(o for o in SINGLE if o in opts) or "naive"


# ---------------------------------------------------------------------------------------- parts
def part_tiny(repeats: int) -> dict:
    from lit_sr.model.adapters import OSEDIFF_VAE_TARGETS
    from lit_sr.model.conditioning.null import NullConditioner
    from lit_sr.model.families.sd import tiny_sd
    from lit_sr.model.generator import OneStepSR
    from lit_sr.model.noise.uniform import UniformNoise

    lora = {"denoiser": {"main": {"rank": 4}}, "vae": {"main": {"rank": 4, "target_modules": OSEDIFF_VAE_TARGETS}}}
    g = OneStepSR(tiny_sd(), UniformNoise(), NullConditioner(), lora=lora).eval()
    lq = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        g(lq)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            g(lq)
            times.append(time.perf_counter() - t0)
    return {"lq": 128, "out": 512, "median_s": statistics.median(times)}


def sd35_pipeline(layers: int):
    """The osediff-preset generator on an in-memory SD3.5-medium-shaped backbone (fp32, CPU)."""
    from lit_sr.config.build import build_generator
    from lit_sr.config.compose import compose
    from lit_sr.model.tracing import sd3_backbone
    from lit_sr.pipeline import LitSRPipeline

    cfg = compose(["backbone=tiny_sd3", "experiment=osediff"])  # the MM-DiT family's LoRA lists
    torch.manual_seed(0)
    bb = sd3_backbone(torch.float32, layers=layers, text_layers=2)
    return LitSRPipeline(build_generator(cfg, bb, training=False), cfg, "cpu", "fp32")


def part_speed_sd35(size: int, repeats: int, layers: int) -> dict:
    t0 = time.perf_counter()
    pipe = sd35_pipeline(layers)
    load_s = time.perf_counter() - t0
    lq = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    single = [o for o in SINGLE if o not in ("compile", "sdpa")]
    rows = {}
    for opts in [set(), *({o} for o in single), set(single)]:
        configure(pipe, opts | {"sdpa"})  # the joint attention is SDPA in every row; the VAE's too
        name = "+".join(o for o in single if o in opts) or "naive"
        rows[name] = time_pipe(pipe, lq, repeats)
        print(f"  {name:<34} {rows[name]['median_s']:8.2f} s", flush=True)
    base = rows["naive"]["median_s"]
    for r in rows.values():
        r["speedup_vs_naive"] = base / r["median_s"]
    return {"lq": size, "out": size * 4, "repeats": repeats, "load_s": load_s, "layers": layers, "rows": rows}


def part_speed(size: int, repeats: int, compile_timeout: int) -> dict:
    t0 = time.perf_counter()
    pipe = sd21_pipeline()
    load_s = time.perf_counter() - t0
    lq = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    configs = [set(), *({o} for o in SINGLE if o != "compile"), set(SINGLE) - {"compile"}]
    rows = {}
    for opts in configs:
        configure(pipe, opts)
        rows[config_name(opts)] = time_pipe(pipe, lq, repeats)
        print(f"  {config_name(opts):<34} {rows[config_name(opts)]['median_s']:8.2f} s", flush=True)
    configure(pipe, set())
    del pipe
    compiled = (_compiled_rows(size, repeats, compile_timeout) if compile_timeout
                else {"status": "skipped", "reason": "--no-compile"})
    rows.update(compiled.get("rows", {}))
    base = rows["naive"]["median_s"]
    for r in rows.values():
        r["speedup_vs_naive"] = base / r["median_s"]
    return {"lq": size, "out": size * 4, "repeats": repeats, "load_s": load_s, "rows": rows,
            "compile": {k: v for k, v in compiled.items() if k != "rows"}}


def _compiled_rows(size: int, repeats: int, timeout: int) -> dict:
    """torch.compile alone and all options combined, in a child process under a time limit."""
    cmd = [sys.executable, __file__, "--compile-worker", "--size", str(size), "--repeats", str(repeats)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "skipped", "reason": f"torch.compile (inductor) of the SD-2.1 UNet and VAE decoder did not "
                f"finish within {timeout} s on this CPU (load + compile + timing; --compile-timeout)"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
        return {"status": "skipped", "reason": f"torch.compile failed: {err}"}
    rows = json.loads(lines[-1])
    for name, r in rows.items():
        print(f"  {name:<34} {r['median_s']:8.2f} s  (warm-up incl. compile {r['warmup_s']:.0f} s)", flush=True)
    return {"status": "ran", "child_s": time.perf_counter() - t0, "rows": rows}


def compile_worker(size: int, repeats: int) -> dict:
    pipe = sd21_pipeline()
    lq = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows = {}
    for opts in ({"compile"}, set(SINGLE)):
        torch._dynamo.reset()
        configure(pipe, opts)
        rows[config_name(opts)] = time_pipe(pipe, lq, repeats)
    return rows


def distilled_parts(generator, widths: dict | None = None) -> dict:
    """Random-weight small VAE halves for ``generator``'s latent layout (their speed is their architecture's)."""
    from lit_sr.model.small_vae import SmallDecoder, SmallEncoder

    vae, widths = generator.vae, widths or SD_DISTILLED
    torch.manual_seed(0)
    return {"decoder": SmallDecoder(vae.channels, vae.factor, **widths["decoder"]).eval(),
            "encoder": SmallEncoder(vae.channels, vae.factor, **widths["encoder"]).eval()}


def part_flops(pipe, parts: dict, size: int) -> dict:
    """Analytic FLOPs of the encoder, the denoiser and the decoder (full and distilled) for a size² output."""
    from lit_sr.model.flops import count_flops

    g = pipe.generator
    f, c = g.vae.factor, g.vae.channels
    lat = size // f
    with torch.no_grad():
        cond = g.conditioner(torch.zeros(1, 3, g.size_multiple, g.size_multiple), {"path": ["x"]})
    t = torch.full((1,), 999, dtype=torch.long)
    return {"size": size,
            "encoder_full": count_flops(g.vae.encode, (1, 3, size, size)),
            "encoder_distilled": count_flops(parts["encoder"], (1, 3, size, size)),
            "denoiser": count_flops(lambda z: g.denoise(z, t, cond), (1, c, lat, lat)),
            "decoder_full": count_flops(g.vae.decode, (1, c, lat, lat)),
            "decoder_distilled": count_flops(parts["decoder"], (1, c, lat, lat))}


def part_fast(size: int, repeats: int, onnx: bool) -> dict:
    """Naive, fast, + distilled decoder, + distilled encoder, ONNX Runtime: one generator, one run."""
    t0 = time.perf_counter()
    pipe = sd21_pipeline()
    load_s = time.perf_counter() - t0
    g = pipe.generator
    parts = distilled_parts(g)
    lq = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows: dict = {}

    def row(name: str, opts: set, decoder: bool = False, encoder: bool = False) -> None:
        configure(pipe, opts)
        g.distilled_decoder = parts["decoder"] if decoder else None
        g.distilled_encoder = parts["encoder"] if encoder else None
        fmt = torch.channels_last if "channels_last" in opts else torch.contiguous_format
        for m in parts.values():
            m.to(memory_format=fmt)
        rows[name] = time_pipe(pipe, lq, repeats)
        print(f"  {name:<34} {rows[name]['median_s']:8.2f} s", flush=True)

    row("naive", set())
    row("fast", FAST)
    row("fast+distilled_decoder", FAST, decoder=True)
    row("fast+distilled_decoder+encoder", FAST, decoder=True, encoder=True)
    flops = {s: part_flops(pipe, parts, s) for s in dict.fromkeys([size * 4, 512])}
    onnx_info: dict = {"status": "skipped", "reason": "--no-onnx"}
    if onnx:
        onnx_info = _onnx_row(pipe, parts, lq, repeats, rows)
    configure(pipe, set())
    base = rows["naive"]["median_s"]
    for r in rows.values():
        r["speedup_vs_naive"] = base / r["median_s"]
    return {"lq": size, "out": size * 4, "repeats": repeats, "load_s": load_s, "rows": rows, "flops": flops,
            "distilled": SD_DISTILLED, "onnx": onnx_info,
            "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}}


def _onnx_row(pipe, parts: dict, lq: torch.Tensor, repeats: int, rows: dict) -> dict:
    """The fused fp32 pass with both distilled halves as an ONNX graph, timed in ONNX Runtime."""
    import tempfile

    from lit_sr.export_onnx import export_graph
    from lit_sr.onnx_pipeline import OnnxPipeline

    g = pipe.generator
    configure(pipe, {"sdpa", "fuse"})
    g.distilled_decoder, g.distilled_encoder = parts["decoder"], parts["encoder"]
    for m in parts.values():
        m.to(memory_format=torch.contiguous_format)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sd21.onnx"
        try:
            meta = export_graph(g, path, info={"what": "benchmark"}, what="the SD-2.1-size generator")
        except Exception as exc:  # noqa: BLE001 - a failed export is a result, reported in the table
            return {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        ox = OnnxPipeline(path, threads=torch.get_num_threads(), auto_tile=None)
        rows["onnx_runtime (fp32, distilled decoder+encoder)"] = time_pipe(ox, lq, repeats)
        print(f"  {'onnx_runtime':<34} {rows['onnx_runtime (fp32, distilled decoder+encoder)']['median_s']:8.2f} s "
              f"(export {meta['export_s']:.0f} s, max |ORT - torch| {meta['check']['max_abs_diff']:.1e})", flush=True)
    return {"status": "ran", "export_s": meta["export_s"], "max_abs_diff": meta["check"]["max_abs_diff"]}


def part_fast_4k(tile: int, height: int = 2160, width: int = 3840) -> dict:
    """Peak live bytes of decoding a 4K output: the distilled decoder vs the full one, untiled and tiled."""
    from lit_sr.model.tracing import PeakTracker, fake_mode, sd21_backbone

    rows = []
    with fake_mode():
        g = _vae_generator(sd21_backbone(torch.float32, text_layers=1), None, None)
        small = distilled_parts(g)["decoder"]
        z = torch.zeros(1, g.vae.channels, height // g.vae.factor, width // g.vae.factor)
        for bf16 in (False, True):
            for decoder in ("full", "distilled"):
                g.distilled_decoder = small if decoder == "distilled" else None
                row = {"decoder": decoder, "precision": "bf16-autocast" if bf16 else "fp32"}
                for name, vae_tile in (("untiled", None), ("tiled", tile)):
                    g.vae_tile = vae_tile
                    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
                    tracker = PeakTracker()
                    with torch.no_grad(), cast, tracker:
                        g.decode(z)
                    row[f"{name}_peak_bytes"] = tracker.peak
                rows.append(row)
                print(f"  {width}x{height} {decoder:<9} {row['precision']:<13} untiled "
                      f"{row['untiled_peak_bytes'] / GB:6.2f} GB  tiled {row['tiled_peak_bytes'] / GB:6.2f} GB", flush=True)
    return {"h": height, "w": width, "vae_tile": tile, "rows": rows,
            "what": "live bytes of activations during OneStepSR.decode (no gradient), weights not included"}


def _vae_generator(backbone, tile: int | None, overlap: int | None):
    from lit_sr.model.adapters import OSEDIFF_VAE_TARGETS
    from lit_sr.model.conditioning.null import NullConditioner
    from lit_sr.model.generator import OneStepSR
    from lit_sr.model.noise.uniform import UniformNoise

    kwargs = {"vae_tile": tile} if tile else {}
    if overlap is not None:
        kwargs["vae_tile_overlap"] = overlap
    lora = {"denoiser": {"main": {"rank": 4}}, "vae": {"main": {"rank": 4, "target_modules": OSEDIFF_VAE_TARGETS}}}
    return OneStepSR(backbone, UniformNoise(), NullConditioner(), lora=lora, **kwargs).eval()


def _vae_peak(g, h: int, w: int, bf16: bool) -> int:
    """Peak live bytes of encode(x) then decode(z) at an h × w output, without gradients."""
    from lit_sr.model.tracing import PeakTracker

    x = torch.rand(1, 3, h, w) * 2 - 1
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    tracker = PeakTracker()
    with torch.no_grad(), cast, tracker:
        z = g.encode(x)
        g.decode(z)
    return tracker.peak


def part_vae_fake(sizes: list[tuple[int, int]], tile: int, stats: list[int]) -> dict:
    """Untiled vs tiled peaks; one tiled column per GroupNorm statistics size (``model.vae_tile_stats``)."""
    from lit_sr.model.tracing import fake_mode, sd21_backbone

    rows = []
    t0 = time.perf_counter()
    with fake_mode():
        g = _vae_generator(sd21_backbone(torch.float32, text_layers=1), None, None)
        overlap = g.vae_tile_overlap
        for h, w in sizes:
            for bf16 in (False, True):
                row = {"h": h, "w": w, "precision": "bf16-autocast" if bf16 else "fp32"}
                g.vae_tile = None
                row["untiled_peak_bytes"] = _vae_peak(g, h, w, bf16)
                g.vae_tile = tile
                for size in stats:
                    g.vae_tile_stats = size
                    row[f"tiled_stats{size}_peak_bytes"] = _vae_peak(g, h, w, bf16)
                rows.append(row)
                tiled = "  ".join(f"tiled (stats {size}) {row[f'tiled_stats{size}_peak_bytes'] / GB:6.2f} GB"
                                  for size in stats)
                print(f"  {w}x{h} {row['precision']:<13} untiled {row['untiled_peak_bytes'] / GB:7.2f} GB  {tiled}",
                      flush=True)
    return {"vae_tile": tile, "vae_tile_overlap": overlap, "stats": stats, "rows": rows,
            "trace_s": time.perf_counter() - t0,
            "what": "live bytes of activations during OneStepSR.encode + decode (no gradient), "
                    "weights not included"}


def part_vae_real(sizes: list[int], tile: int, overlap: int, stats: int) -> dict:
    from diffusers import AutoencoderKL

    from lit_sr.model.autoencoder import Autoencoder
    from lit_sr.model.families.sd import tiny_sd
    from lit_sr.model.random_backbone import SD21_VAE

    torch.manual_seed(0)
    vae = AutoencoderKL(**SD21_VAE).requires_grad_(False).eval()
    bb = tiny_sd()  # its small UNet and text tower: only the VAE runs here
    bb.autoencoder = Autoencoder(vae)
    g = _vae_generator(bb, None, overlap)
    g.vae_tile_stats = stats
    rows = []
    for s in sizes:
        row = {"size": s}
        for name, vae_tile in (("untiled", None), ("tiled", tile)):
            g.vae_tile = vae_tile
            t0 = time.perf_counter()
            row[f"{name}_peak_bytes"] = _vae_peak(g, s, s, False)
            row[f"{name}_s"] = time.perf_counter() - t0
        rows.append(row)
        print(f"  {s}x{s} untiled {row['untiled_peak_bytes'] / MiB:8.0f} MiB  tiled {row['tiled_peak_bytes'] / MiB:6.0f}"
              f" MiB", flush=True)
    return {"vae_tile": tile, "vae_tile_overlap": overlap, "vae_tile_stats": stats, "precision": "fp32", "rows": rows,
            "what": "PeakTracker over real tensors: live bytes allocated during encode + decode"}


# ---------------------------------------------------------------------------------------- tables
def tables(results: dict) -> str:
    out = []
    if "tiny" in results:
        t = results["tiny"]
        out.append(f"tiny backbone, fp32, {t['lq']}² → {t['out']}²: {t['median_s']:.3f} s median")
    if "speed" in results:
        s = results["speed"]
        out += [f"\nSD-2.1-base size, CPU ({s['threads']} threads), {s['lq']}² LQ → {s['out']}², median of "
                f"{s['repeats']} after a warm-up; ratio = naive time / this time",
                "| configuration | median s | speed-up vs naive |", "|---|---:|---:|"]
        for name, r in s["rows"].items():
            out.append(f"| {name} | {r['median_s']:.2f} | {r['speedup_vs_naive']:.2f}× |")
        if s["compile"].get("status") == "skipped":
            out.append(f"torch.compile: skipped — {s['compile']['reason']}")
    if "fast" in results:
        s = results["fast"]
        out += [f"\nSD-2.1-base size, CPU ({s['threads']} threads), {s['lq']}² LQ → {s['out']}², median of "
                f"{s['repeats']} after a warm-up, one run; fast = sdpa+fuse+bf16+channels_last; distilled halves at "
                f"{s['distilled']} ({s['parameters']['decoder']:,} / {s['parameters']['encoder']:,} parameters)",
                "| configuration | median s | speed-up vs naive |", "|---|---:|---:|"]
        for name, r in s["rows"].items():
            out.append(f"| {name} | {r['median_s']:.2f} | {r['speedup_vs_naive']:.2f}× |")
        if s["onnx"].get("status") != "ran":
            out.append(f"ONNX Runtime: {s['onnx']['status']} — {s['onnx'].get('reason', '')}")
        out += ["", "| analytic GFLOP (output) | encoder full | encoder distilled | denoiser | decoder full | "
                "decoder distilled | pass full | pass distilled |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for size, fl in s["flops"].items():
            full = fl["encoder_full"] + fl["denoiser"] + fl["decoder_full"]
            small = fl["encoder_distilled"] + fl["denoiser"] + fl["decoder_distilled"]
            out.append(f"| {size}² | {fl['encoder_full'] / 1e9:.1f} | {fl['encoder_distilled'] / 1e9:.1f} | "
                       f"{fl['denoiser'] / 1e9:.1f} | {fl['decoder_full'] / 1e9:.1f} | {fl['decoder_distilled'] / 1e9:.1f} | "
                       f"{full / 1e9:.1f} | {small / 1e9:.1f} ({full / small:.1f}× fewer) |")
    if "fast_4k" in results:
        v = results["fast_4k"]
        out += [f"\ndecoding a {v['w']}×{v['h']} output at SD-2.1 size: peak activations (fake tensors), "
                f"untiled vs tiled (vae_tile={v['vae_tile']})",
                "| decoder | precision | untiled GB | tiled GB |", "|---|---|---:|---:|"]
        for r in v["rows"]:
            out.append(f"| {r['decoder']} | {r['precision']} | {r['untiled_peak_bytes'] / GB:.2f} | "
                       f"{r['tiled_peak_bytes'] / GB:.2f} |")
    if "speed_sd35" in results:
        s = results["speed_sd35"]
        out += [f"\nSD3.5-medium width ({s['layers']} of 24 MM-DiT blocks), CPU ({s['threads']} threads), "
                f"{s['lq']}² LQ → {s['out']}², median of {s['repeats']}; joint attention SDPA in every row",
                "| configuration | median s | speed-up vs naive |", "|---|---:|---:|"]
        for name, r in s["rows"].items():
            out.append(f"| {name} | {r['median_s']:.2f} | {r['speedup_vs_naive']:.2f}× |")
    if "vae_fake" in results:
        v = results["vae_fake"]
        stats = v.get("stats", [])
        out += [f"\nSD-2.1 VAE encode + decode peak (fake tensors, activations only), untiled vs tiled "
                f"(vae_tile={v['vae_tile']}, overlap {v['vae_tile_overlap']}; GroupNorm statistics from the image "
                "downscaled to at most S px, model.vae_tile_stats)",
                "| output | precision | untiled GB | " + " | ".join(f"tiled GB, S={s}" for s in stats) + " |",
                "|---|---|---:|" + "---:|" * len(stats)]
        for r in v["rows"]:
            tiled = " | ".join(f"{r[f'tiled_stats{s}_peak_bytes'] / GB:.2f}" for s in stats)
            out.append(f"| {r['w']}×{r['h']} | {r['precision']} | {r['untiled_peak_bytes'] / GB:.2f} | {tiled} |")
    if "vae_real" in results:
        v = results["vae_real"]
        out += [f"\nreal-width VAE, real tensors, fp32 (vae_tile={v['vae_tile']}, overlap {v['vae_tile_overlap']}, "
                f"vae_tile_stats={v.get('vae_tile_stats')})",
                "| output | untiled MiB | tiled MiB | untiled s | tiled s |", "|---|---:|---:|---:|---:|"]
        for r in v["rows"]:
            out.append(f"| {r['size']}² | {r['untiled_peak_bytes'] / MiB:.0f} | {r['tiled_peak_bytes'] / MiB:.0f} | "
                       f"{r['untiled_s']:.1f} | {r['tiled_s']:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--size", type=int, default=64, help="LQ size of the speed part (output ×4)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile-timeout", type=int, default=300, help="seconds for the torch.compile child")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime row of the fast part")
    ap.add_argument("--sd35-layers", type=int, default=4, help="MM-DiT blocks of the speed-sd35 part (published: 24)")
    ap.add_argument("--vae-tile", type=int, default=512, help="vae_tile of the fake-tensor VAE part")
    ap.add_argument("--vae-tile-stats", nargs="+", type=int, default=[1024, 512],
                    help="GroupNorm statistics sizes of the fake-tensor VAE part's tiled columns (model default 1024)")
    ap.add_argument("--real-sizes", nargs="+", type=int, default=[256, 512, 768])
    ap.add_argument("--real-tile", type=int, default=256)
    ap.add_argument("--real-overlap", type=int, default=64)
    ap.add_argument("--real-stats", type=int, default=None,
                    help="vae_tile_stats of the real-tensor part (default: --real-tile, so the tiled peak stays flat)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs this process may use)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inference.json"))
    ap.add_argument("--merge", action="store_true", help="keep the other parts of an existing --out file")
    ap.add_argument("--compile-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("LIT_SR_CACHE", str(ROOT / ".cache" / "lit_sr"))
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    if args.compile_worker:
        print(json.dumps(compile_worker(args.size, args.repeats)))
        return 0
    results: dict = {"meta": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "machine": platform.processor() or platform.machine(),
                              "loadavg_before": os.getloadavg()}}
    out = Path(args.out)
    if args.merge and out.exists():  # keep the parts of an earlier run that are not rerun now
        results = {**json.loads(out.read_text()), "meta": results["meta"]}
    t_all = time.perf_counter()

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**results, "tables": tables(results)}, indent=2))

    if "tiny" in args.parts:
        results["tiny"] = part_tiny(args.repeats)
        save()
    if "speed" in args.parts:
        print("speed (SD-2.1-base size):", flush=True)
        results["speed"] = part_speed(args.size, args.repeats, 0 if args.no_compile else args.compile_timeout)
        results["speed"]["threads"] = torch.get_num_threads()
        save()
    if "fast" in args.parts:
        print("fast one-step inference (SD-2.1-base size):", flush=True)
        results["fast"] = part_fast(args.size, args.repeats, not args.no_onnx)
        results["fast"]["threads"] = torch.get_num_threads()
        save()
    if "fast-4k" in args.parts:
        print("4K decode peak, fake tensors:", flush=True)
        results["fast_4k"] = part_fast_4k(args.vae_tile)
        save()
    if "speed-sd35" in args.parts:
        print("speed (SD3.5-medium width):", flush=True)
        results["speed_sd35"] = part_speed_sd35(args.size, args.repeats, args.sd35_layers)
        results["speed_sd35"]["threads"] = torch.get_num_threads()
        save()
    if "vae-fake" in args.parts:
        print("VAE peak, fake tensors:", flush=True)
        results["vae_fake"] = part_vae_fake([(512, 512), (2048, 2048), (2160, 3840), (4096, 4096)], args.vae_tile,
                                            args.vae_tile_stats)
        save()
    if "vae-real" in args.parts:
        print("VAE peak, real tensors:", flush=True)
        results["vae_real"] = part_vae_real(args.real_sizes, args.real_tile, args.real_overlap,
                                            args.real_stats or args.real_tile)
    results["meta"]["total_s"] = time.perf_counter() - t_all
    results["meta"]["loadavg_after"] = os.getloadavg()
    save()
    print("\n" + tables(results))
    print(f"wrote {out} ({results['meta']['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
