"""Every GPU measurement in one run (about 8 minutes on one H100), written to one JSON file.

Both backbone families are measured (``--families sd21 sd35``): SD-2.1-base (UNet, ε) from a
random-weight folder, and SD3.5-medium (MM-DiT, flow matching; 24 blocks, CLIP-L + CLIP-G, no T5)
built in memory from its published configuration (:func:`lit_sr.model.tracing.sd3_backbone`).

1. ``inference``: one-step SR, 128² LQ → 512², through the project's loading path
   (``experiment=osediff``, ``build_generator``, :class:`~lit_sr.pipeline.LitSRPipeline`): the naive diffusers-style path
   (fp32, unfused peft LoRA, ``AttnProcessor``, NCHW, eager) against bf16 + SDPA + fused LoRA +
   channels-last, eager and ``torch.compile``-d; the same with the distilled VAE halves
   (:mod:`lit_sr.model.small_vae` at ``benchmarks/inference.py``'s ``SD_DISTILLED`` widths, random
   weights), eager and compiled; and the fused fp32 pass with them as an ONNX graph in ONNX Runtime's
   CUDA execution provider (reported as skipped where ``onnxruntime-gpu`` is not installed). Median of
   ``--repeats`` after a warm-up; ``torch.cuda.max_memory_allocated`` of each;
2. ``train``: each paper preset's training step (the calls of ``SRSystem.training_step``:
   generator pass, loss terms, backward, clip, AdamW; then each term's own network), bf16
   (frozen weights bf16, bf16 autocast) with gradient checkpointing, at batch 1 and 4 and 512²
   crops: peak ``torch.cuda.max_memory_allocated`` and steps/s, every stage of the preset;
3. ``degradation``: Real-ESRGAN degradation of 512² crops on the GPU (``data.degrade_on=device``:
   ``RealESRGANDegradation.apply`` on device tensors), batched vs one sample at a time
   (:func:`benchmarks.degradation.bench`).

The random SD-2.1 folder (published depths: 23-layer text tower, ViT-H image encoder for rcod)
is built on first use under ``$LIT_SR_CACHE/sd21-random-gpu`` (about 1–2 minutes).

``--dry-run``: the same code paths on the CPU at tiny sizes (the tiny backbones of both families,
32² LQ, batch 1 and 2, one or two iterations) to prove that every part starts; the numbers mean nothing.

    python benchmarks/gpu.py [--parts inference train degradation] [--families sd21 sd35] [--out FILE]
    python benchmarks/gpu.py --dry-run
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PRESETS = ("osediff", "codsr", "rcod", "ifcsr")
PARTS = ("inference", "train", "degradation")
FAMILIES = ("sd21", "sd35")
GB = 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def random_sd21_dir() -> Path:
    """Full-depth text tower and the ViT-H image encoder (rcod): the resident memory of a real run."""
    from inference import random_sd21_dir as cached

    return cached("sd21-random-gpu", "--with-image-encoder", expect="image_encoder")


def backbone_overrides(dry: bool, preset: str = "osediff", family: str = "sd21") -> list[str]:
    if dry or family == "sd35":  # the tiny backbone of the family (sd35: its config; the backbone is built in memory)
        return [*(["backbone=tiny_sd3"] if family == "sd35" else []),
                *(["backbone.vision_encoder=true"] if preset == "rcod" else [])]
    path = random_sd21_dir()
    out = ["backbone=sd21", f"backbone.path={path}"]
    if preset == "rcod":
        out.append(f"backbone.vision_encoder={path / 'image_encoder'}")
    return out


def in_memory_backbone(family: str, dry: bool, preset: str = "osediff", dtype: torch.dtype = torch.float32):
    """SD3.5-medium at its published size, random weights (no folder: 10 GB in fp32); None otherwise."""
    if dry or family != "sd35":
        return None
    from lit_sr.model.tracing import sd3_backbone

    torch.manual_seed(0)
    return sd3_backbone(dtype, vision=preset == "rcod")


# ---------------------------------------------------------------------------------------- inference
def part_inference(device: torch.device, dry: bool, repeats: int, family: str = "sd21") -> dict:
    import inference
    from inference import config_name, configure, time_pipe

    from lit_sr.config.build import build_generator
    from lit_sr.config.compose import compose
    from lit_sr.pipeline import LitSRPipeline

    lq_size = 32 if dry else 128
    inference.COMPILE_BACKEND = "aot_eager" if dry else "inductor"  # dry run: dynamo's wrapping, no codegen
    cfg = compose([*backbone_overrides(dry, family=family), "experiment=osediff"])
    torch.manual_seed(0)
    pipe = LitSRPipeline(build_generator(cfg, in_memory_backbone(family, dry), training=False), cfg, device, "fp32")
    lq = torch.rand(1, 3, lq_size, lq_size, generator=torch.Generator().manual_seed(0))
    eager = {"sdpa", "fuse", "bf16", "channels_last"}
    rows = {}
    for opts in (set(), eager, eager | {"compile"}):
        name = config_name(opts)
        torch._dynamo.reset()
        configure(pipe, opts)
        _reset_peak(device)
        try:
            rows[name] = time_pipe(pipe, lq, repeats)
        except Exception as exc:  # noqa: BLE001 - a failed compile is a result, not the end of the run
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            print(f"  {name}: {rows[name]['error']}", flush=True)
            continue
        rows[name]["peak_bytes"] = _peak(device)
        print(f"  {name:<34} {rows[name]['median_s'] * 1e3:9.1f} ms  (warm-up {rows[name]['warmup_s']:.1f} s)",
              flush=True)
    onnx = _distilled_rows(pipe, lq, repeats, device, eager, rows)
    base = rows["naive"].get("median_s")
    for r in rows.values():
        if "median_s" in r and base:
            r["speedup_vs_naive"] = base / r["median_s"]
    configure(pipe, set())
    del pipe
    torch._dynamo.reset()
    return {"lq": lq_size, "out": lq_size * 4, "repeats": repeats, "rows": rows, "onnx": onnx,
            "distilled": inference.SD_DISTILLED}


def _timed_row(name: str, run, device: torch.device, rows: dict) -> None:
    """rows[name] = the timing of ``run()`` with its peak memory, or the error it raised."""
    _reset_peak(device)
    try:
        rows[name] = run()
    except Exception as exc:  # noqa: BLE001 - a failed row is a result, not the end of the run
        rows[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        print(f"  {name}: {rows[name]['error']}", flush=True)
        return
    rows[name]["peak_bytes"] = _peak(device)
    print(f"  {name:<34} {rows[name]['median_s'] * 1e3:9.1f} ms  (warm-up {rows[name]['warmup_s']:.1f} s)", flush=True)


def _distilled_rows(pipe, lq: torch.Tensor, repeats: int, device: torch.device, eager: set, rows: dict) -> dict:
    """The fast path with the distilled VAE halves (random weights at SD widths: their speed is their
    architecture's), eager and compiled, and the fused fp32 graph with them in ONNX Runtime (CUDA EP)."""
    import tempfile

    from inference import configure, distilled_parts, time_pipe

    g = pipe.generator
    parts = {k: m.to(device) for k, m in distilled_parts(g).items()}

    def attach(on: bool, fmt=torch.contiguous_format) -> None:
        g.distilled_decoder = parts["decoder"] if on else None
        g.distilled_encoder = parts["encoder"] if on else None
        for m in parts.values():
            m.to(memory_format=fmt)

    for name, opts in (("fast+distilled_decoder+encoder", eager), ("compile+distilled_decoder+encoder",
                                                                     eager | {"compile"})):
        torch._dynamo.reset()
        configure(pipe, opts)
        attach(True, torch.channels_last)
        _timed_row(name, lambda: time_pipe(pipe, lq, repeats), device, rows)
    torch._dynamo.reset()
    configure(pipe, {"sdpa", "fuse"})
    attach(True)
    info: dict = {"status": "skipped"}
    try:
        import onnxruntime as ort

        from lit_sr.export_onnx import export_graph
        from lit_sr.onnx_pipeline import OnnxPipeline
    except ImportError as exc:
        info["reason"] = f"onnx extra not installed ({exc.name})"
    else:
        provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            info["reason"] = f"{provider} not in this onnxruntime ({', '.join(ort.get_available_providers())})"
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "pass.onnx"
                try:
                    meta = export_graph(g.cpu(), path, info={"what": "gpu benchmark"}, what="the benchmark generator")
                except Exception as exc:  # noqa: BLE001 - a failed export is a result
                    info = {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                else:
                    ox = OnnxPipeline(path, device=device.type, auto_tile=None)
                    _timed_row("onnx_runtime (fp32, distilled decoder+encoder)", lambda: time_pipe(ox, lq, repeats),
                               device, rows)
                    info = {"status": "ran", "provider": provider, "export_s": meta["export_s"],
                            "max_abs_diff": meta["check"]["max_abs_diff"]}
    g.to(device)  # back from the CPU copy the exporter traced
    if info["status"] != "ran":
        print(f"  onnx_runtime: {info['status']} ({info.get('reason')})", flush=True)
    attach(False)
    return info


# ---------------------------------------------------------------------------------------- training
def _train_cfg(preset: str, batch: int, size: int, dry: bool, family: str = "sd21"):
    from lit_sr.config.compose import compose

    return compose([*backbone_overrides(dry, preset, family), f"experiment={preset}", "model.gradient_checkpointing=true",
                    f"data.batch_size={batch}", f"data.crop_size={size}", "val=null", "checkpoint=last",
                    "backbone.dtype=bf16", "trainer.precision=bf16-mixed"])


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def measure_train(preset: str, batches: list[int], size: int, steps: int, device: torch.device, dry: bool,
                  family: str = "sd21") -> list:
    """One system per preset (the batch size only changes the data), every stage at every batch size."""
    from train_step import _batch, _step

    from lit_sr.config.systems import build_system

    torch.manual_seed(0)
    system = build_system(_train_cfg(preset, max(batches), size, dry, family),
                          backbone=in_memory_backbone(family, dry, preset, torch.bfloat16))
    noise = system.generator.noise
    if hasattr(noise, "apply_calibration"):
        noise.apply_calibration({"m_min": 0.3, "m_max": 0.9})  # LDG: no data pass here
    system.to(device).train()
    opts, _ = system.configure_optimizers()

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16)

    rows = []
    try:
        for batch in batches:
            stages = []
            for index in range(len(system.plan)):
                system.enter_stage(index)
                data = [_to_device(_batch(size, batch), device) for _ in range(steps + 1)]
                _reset_peak(device)
                _step(system, opts, data[0], autocast)  # warm-up (allocator, cuDNN plans, optimizer state)
                _sync(device)
                t0 = time.perf_counter()
                for b in data[1:]:
                    _step(system, opts, b, autocast)
                _sync(device)
                elapsed = time.perf_counter() - t0
                stages.append({"stage": system.plan[index].name, "steps_per_s": steps / elapsed,
                               "peak_bytes": _peak(device)})
                for opt in opts:  # the next stage / batch size starts its optimizer state afresh
                    opt.state.clear()
                del data
            peaks = [s["peak_bytes"] for s in stages if s["peak_bytes"] is not None]
            rows.append({"preset": preset, "batch": batch, "size": size, "precision": "bf16", "ckpt": True,
                         "stages": stages, "peak_bytes": max(peaks) if peaks else None,
                         "steps_per_s_min": min(s["steps_per_s"] for s in stages)})
    finally:
        del system, opts
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def part_train(device: torch.device, dry: bool, presets: list[str], batches: list[int], family: str = "sd21") -> dict:
    size, steps = (64, 1) if dry else (512, 5)
    rows = []
    for preset in presets:
        try:
            got = measure_train(preset, batches, size, steps, device, dry, family)
        except Exception as exc:  # noqa: BLE001 - report it and go on with the next preset
            traceback.print_exc()
            got = [{"preset": preset, "batch": b, "error": f"{type(exc).__name__}: {str(exc)[:300]}"} for b in batches]
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for r in got:
            peak = "n/a (CPU)" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / GB:.2f} GB"
            what = r.get("error") or f"{r['steps_per_s_min']:.2f} steps/s, peak {peak}"
            print(f"  {preset:8s} b={r['batch']} {what}", flush=True)
        rows += got
    return {"size": size, "steps": steps, "rows": rows}


# ---------------------------------------------------------------------------------------- degradation
def part_degradation(device: torch.device, dry: bool) -> dict:
    from degradation import bench

    batch, size, repeats = (2, 64, 1) if dry else (32, 512, 5)
    r = bench("realesrgan_x4plus", device, batch, size, repeats)
    print(f"  batched {r['batched_pairs_per_s']:.1f} pairs/s, loop {r['loop_pairs_per_s']:.1f} pairs/s, "
          f"speed-up {r['speedup']:.2f}x, identical {r['identical_output']}", flush=True)
    return r


# ---------------------------------------------------------------------------------------- main
def tables(res: dict) -> str:
    out = []
    for family, inf in res.get("inference", {}).items():
        if not isinstance(inf, dict) or "rows" not in inf:
            continue
        out += [f"inference {family} {inf['lq']}² → {inf['out']}² ({res['device']})",
                "| configuration | median ms | speed-up | peak GB |", "|---|---:|---:|---:|"]
        for name, r in inf["rows"].items():
            if "error" in r:
                out.append(f"| {name} | error: {r['error']} | | |")
            else:
                peak = "" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / GB:.2f}"
                out.append(f"| {name} | {r['median_s'] * 1e3:.1f} | {r.get('speedup_vs_naive', 0):.2f}× | {peak} |")
    for family, train in res.get("train", {}).items():
        if not isinstance(train, dict) or "rows" not in train:
            continue
        out += [f"\ntraining step {family}, bf16 + gradient checkpointing, {train['size']}² crops",
                "| preset | batch | peak GB (largest stage) | steps/s (slowest stage) |", "|---|---:|---:|---:|"]
        for r in train["rows"]:
            if "error" in r:
                out.append(f"| {r['preset']} | {r['batch']} | error: {r['error'][:120]} | |")
            else:
                peak = "n/a (CPU)" if r["peak_bytes"] is None else f"{r['peak_bytes'] / GB:.2f}"
                out.append(f"| {r['preset']} | {r['batch']} | {peak} | {r['steps_per_s_min']:.2f} |")
    if "degradation" in res and "speedup" in res["degradation"]:
        d = res["degradation"]
        out.append(f"\ndegradation on {d['device']}, batch {d['batch']}, {d['hq_size']}²: batched "
                   f"{d['batched_pairs_per_s']:.1f} pairs/s, loop {d['loop_pairs_per_s']:.1f}, {d['speedup']:.2f}×")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    ap.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    ap.add_argument("--batches", nargs="+", type=int, default=None, help="default 1 4 (dry run: 1 2)")
    ap.add_argument("--repeats", type=int, default=None, help="inference repeats (default 10, dry run 1)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny backbone and sizes: every code path starts")
    ap.add_argument("--out", default=None, help="default benchmarks/results/gpu.json (dry run: gpu_dry_run.json)")
    args = ap.parse_args(argv)
    os.environ.setdefault("LIT_SR_CACHE", str(ROOT / ".cache" / "lit_sr"))
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or use --dry-run to check the code paths on the CPU")
        return 2
    device = torch.device("cpu" if dry else "cuda")
    if not dry:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the naive baseline
    repeats = args.repeats or (1 if dry else 10)
    batches = args.batches or ([1, 2] if dry else [1, 4])
    res: dict = {"device": "cpu (dry run)" if dry else torch.cuda.get_device_name(device), "dry_run": dry,
                 "torch": torch.__version__}
    t_all = time.perf_counter()
    failed = False
    steps = {"inference": lambda fam: part_inference(device, dry, repeats, fam),
             "train": lambda fam: part_train(device, dry, args.presets, batches, fam)}
    for part in args.parts:
        print(f"{part}:", flush=True)
        t0 = time.perf_counter()
        if part == "degradation":  # the data path: the same for every family
            try:
                res[part] = part_degradation(device, dry)
            except Exception as exc:  # noqa: BLE001 - the other parts still run
                traceback.print_exc()
                res[part] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                failed = True
            res[part]["part_s"] = time.perf_counter() - t0
            continue
        res[part] = {}
        for family in args.families:
            print(f" {family}:", flush=True)
            t1 = time.perf_counter()
            try:
                res[part][family] = steps[part](family)
            except Exception as exc:  # noqa: BLE001 - the other parts still run
                traceback.print_exc()
                res[part][family] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                failed = True
            res[part][family]["part_s"] = time.perf_counter() - t1
    for family_rows in res.get("train", {}).values():
        failed |= any("error" in r for r in family_rows.get("rows", []))
    for family_rows in res.get("inference", {}).values():
        failed |= any("error" in r for r in family_rows.get("rows", {}).values())
    res["total_s"] = time.perf_counter() - t_all
    res["tables"] = tables(res)
    print("\n" + res["tables"])
    out = Path(args.out or ROOT / "benchmarks" / "results" / ("gpu_dry_run.json" if dry else "gpu.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out} ({res['total_s']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
