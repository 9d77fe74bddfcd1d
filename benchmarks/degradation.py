"""Throughput of the Real-ESRGAN degradation: one batched pass vs a one-sample-at-a-time loop.

Both paths apply the *same* sampled records to the same 512² HQ crops of real photos, so they do
identical work and produce identical LQ (checked); only batching differs. Prints a table and
writes JSON (``--out``). Run: ``python benchmarks/degradation.py [--device cuda] [--repeats 3]``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.degradation.realesrgan import RealESRGANDegradation  # noqa: E402


def load_preset(name: str) -> RealESRGANDegradation:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.load(ROOT / "conf" / "degradation" / f"{name}.yaml"))


def photo_crops(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` random size² crops of scikit-image's bundled photos that are at least that large."""
    import numpy as np
    import skimage.data

    names = ("astronaut", "hubble_deep_field", "retina", "immunohistochemistry", "coffee", "chelsea", "rocket")
    images = []
    for name in names:
        arr = getattr(skimage.data, name)()
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if min(arr.shape[:2]) >= size:
            images.append(torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).float() / 255)
    gen = torch.Generator().manual_seed(seed)
    crops = []
    for k in range(n):
        im = images[k % len(images)]
        y = int(torch.randint(0, im.shape[1] - size + 1, (1,), generator=gen))
        x = int(torch.randint(0, im.shape[2] - size + 1, (1,), generator=gen))
        crops.append(im[:, y : y + size, x : x + size])
    return torch.stack(crops)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(preset: str, device: torch.device, batch: int, size: int, repeats: int) -> dict:
    deg = load_preset(preset)
    hq = photo_crops(batch, size).to(device)
    records = [deg.sample(batch, torch.Generator().manual_seed(100 + r)) for r in range(repeats)]
    deg.apply(hq[:1], records[0].select(0))  # warm-up (allocator, oneDNN primitives)
    batched_s, looped_s = [], []
    identical = True
    for record in records:  # alternate the two paths so both see the same machine load
        _sync(device)
        start = time.perf_counter()
        lq, _ = deg.apply(hq, record)
        _sync(device)
        batched_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        singles = [deg.apply(hq[i : i + 1], record.select(i))[0] for i in range(batch)]
        _sync(device)
        looped_s.append(time.perf_counter() - start)
        identical &= bool(torch.equal(torch.cat(singles), lq))
    pairs = batch * repeats
    return {
        "preset": preset,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "batch": batch,
        "hq_size": size,
        "lq_size": size // deg.scale,
        "repeats": repeats,
        "batched_pairs_per_s": pairs / sum(batched_s),
        "loop_pairs_per_s": pairs / sum(looped_s),
        "speedup": sum(looped_s) / sum(batched_s),
        "speedup_median": statistics.median(lo / ba for lo, ba in zip(looped_s, batched_s)),
        "identical_output": identical,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="realesrgan_x4plus")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "degradation.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = [bench(args.preset, torch.device(d), args.batch, args.size, args.repeats) for d in devices]
    print(f"{args.preset}, batch {args.batch}, HQ {args.size}² → LQ {rows[0]['lq_size']}², {args.repeats} batches, {torch.get_num_threads()} threads")
    print(f"{'device':<24}{'batched pairs/s':>17}{'loop pairs/s':>14}{'speedup':>9}{'median':>8}  identical")
    for r in rows:
        print(f"{r['device']:<24}{r['batched_pairs_per_s']:>17.2f}{r['loop_pairs_per_s']:>14.2f}"
              f"{r['speedup']:>8.2f}x{r['speedup_median']:>7.2f}x  {r['identical_output']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        # A shared machine's load changes timings; keep it next to them.
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
