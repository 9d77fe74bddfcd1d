"""Training pairs per second per CPU data-loader worker: HR folders vs a packed shard set.

Both sources hold the same HR images (PNG, ``--side``² crops of the bundled photos, resized and
flipped into ``--images`` distinct files); both run the project's own loaders (``data=skimage``
with ``train_dirs`` vs ``data=shards``) with ``degradation=realesrgan_x4plus`` at 512² crops and
one worker process, once with the degradation in the worker (``degrade_on=worker``) and once with
only decode + crop there (``degrade_on=device``: the degradation moves to the GPU). Sources are
measured in alternating rounds so both see the same machine load; ratios come from one run.

The last part estimates how many such workers one GPU needs at the osediff training step rate:
no GPU step rate has been measured (``benchmarks/gpu.py`` has only a CPU dry run), so the rate is
estimated from the traced forward FLOPs of SD-2.1 at 512² (DESIGN.md) and an assumed utilisation.

    python benchmarks/data.py [--images 128] [--rounds 5] [--out benchmarks/results/data.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Traced forward FLOPs of one SD-2.1-base one-step pass at 512² (DESIGN.md): VAE encoder, UNet, VAE decoder.
TFLOP_ENC, TFLOP_UNET, TFLOP_DEC = 1.1, 0.8, 2.5
H100_BF16_DENSE_TFLOPS = 989.0


def osediff_tflop_per_pair() -> dict:
    """One osediff training pair at 512² in TFLOP, term by term (an estimate from the forward FLOPs).

    Generator forward (enc + UNet + dec); backward to the LoRA of the UNet and the encoder (input
    gradients through the frozen decoder, UNet and encoder: about one forward each); VSD: the frozen
    real score with CFG (two UNet passes) and the fake score's forward; the fake score's own training
    step (forward + backward); LPIPS' VGG16 at 512² (forward + input gradients, ~0.3).
    """
    parts = {"generator_forward": TFLOP_ENC + TFLOP_UNET + TFLOP_DEC,
             "generator_backward": TFLOP_DEC + TFLOP_UNET + TFLOP_ENC,
             "vsd_scores": 3 * TFLOP_UNET, "vsd_fake_training": 3 * TFLOP_UNET, "lpips": 0.3}
    return {**parts, "total": sum(parts.values())}


def make_photos(folder: Path, n: int, side: int) -> list[Path]:
    """``n`` distinct side² PNGs cut from the bundled photos (resized up where they are smaller)."""
    import numpy as np
    import skimage.data
    import torch.nn.functional as F
    from PIL import Image

    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
    photos = [torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, n)()[..., :3])).permute(2, 0, 1).float()
              for n in names]
    gen = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        scale = max(1.0, side / min(im.shape[1:])) * (1 + float(torch.rand((), generator=gen)) * 0.5)
        im = F.interpolate(im[None], scale_factor=scale, mode="bicubic", align_corners=False)[0].clamp(0, 255)
        y = int(torch.randint(0, im.shape[1] - side + 1, (1,), generator=gen))
        x = int(torch.randint(0, im.shape[2] - side + 1, (1,), generator=gen))
        crop = im[:, y:y + side, x:x + side]
        if i % 2:
            crop = crop.flip(-1)
        path = folder / f"{i:04d}.png"
        Image.fromarray(crop.permute(1, 2, 0).round().byte().numpy()).save(path)
        out.append(path)
    return out


def loader(kind: str, source: Path, degrade_on: str, batch: int, crop: int):
    from lit_sr.config.build import build_datamodule
    from lit_sr.config.compose import compose

    data = ["data=shards", f"data.shards={source}"] if kind == "shards" else [f"data.train_dirs=[{source}]",
                                                                              "data.epoch_size=null"]
    cfg = compose([*data, "degradation=realesrgan_x4plus", f"data.crop_size={crop}", f"data.batch_size={batch}",
                   "data.num_workers=1", f"data.degrade_on={degrade_on}", "data.index_cache=false"])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    return dm.train_dataloader()


def measure(kind: str, source: Path, degrade_on: str, batch: int, crop: int, pairs: int) -> float:
    """Pairs per second of one worker, after its first batch (worker start-up and imports excluded)."""
    it = iter(loader(kind, source, degrade_on, batch, crop))
    next(it)
    start, got = time.perf_counter(), 0
    while got < pairs:
        got += len(next(it)["hq"])
    rate = got / (time.perf_counter() - start)
    del it  # stops the worker
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--side", type=int, default=768, help="HR image side (the crops are 512²)")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=None,
                        help="pairs timed per measurement (default: the epoch after its first batch)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mfu", type=float, nargs=2, default=[0.3, 0.5], help="assumed GPU utilisation range")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data.json"))
    args = parser.parse_args()
    os.environ.setdefault("LIT_SR_CACHE", str(ROOT / ".cache" / "lit_sr"))
    load_before = os.getloadavg()
    from datamodules.packing import pack

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        make_photos(folder, args.images, args.side)
        start = time.perf_counter()
        pack([str(folder)], str(Path(tmp) / "shards"), workers=2, part_size=16)
        pack_s = time.perf_counter() - start
        sources = {"folders": folder, "shards": Path(tmp) / "shards"}
        rates: dict[str, list[float]] = {}
        # Both sources time the same draws' worth of work: one epoch over every image (after its first batch).
        # The degradation's cost depends on its sampled parameters, so short windows of different batches differ.
        pairs = args.pairs or (args.images // args.batch - 1) * args.batch
        for _ in range(args.rounds):  # alternate, so that both sources see the same load
            for degrade_on in ("worker", "device"):
                for kind, source in sources.items():
                    rate = measure(kind, source, degrade_on, args.batch, args.crop, pairs)
                    rates.setdefault(f"{kind}/{degrade_on}", []).append(rate)
    rows = {k: {"pairs_per_s_per_worker": statistics.median(v), "runs": v} for k, v in rates.items()}
    flop = osediff_tflop_per_pair()
    gpu_pairs = [m * H100_BF16_DENSE_TFLOPS / flop["total"] for m in args.mfu]
    workers = {mode: [g / rows[f"shards/{mode}"]["pairs_per_s_per_worker"] for g in gpu_pairs]
               for mode in ("worker", "device")}
    print(f"{args.images} PNGs {args.side}², realesrgan_x4plus, {args.crop}² crops, batch {args.batch}, "
          f"1 worker, median of {args.rounds} rounds; pack: {pack_s:.1f} s with 2 processes")
    print(f"{'degrade_on':<12}{'folders pairs/s':>17}{'shards pairs/s':>16}{'shards/folders':>16}{'per round':>11}")
    for mode in ("worker", "device"):
        f, s = rows[f"folders/{mode}"]["pairs_per_s_per_worker"], rows[f"shards/{mode}"]["pairs_per_s_per_worker"]
        per_round = statistics.median(b / a for a, b in zip(rates[f"folders/{mode}"], rates[f"shards/{mode}"]))
        print(f"{mode:<12}{f:>17.2f}{s:>16.2f}{s / f:>15.2f}x{per_round:>10.2f}x")
    print(f"osediff pair at 512²: ~{flop['total']:.1f} TFLOP (estimate from traced forward FLOPs; no GPU step rate "
          f"measured) -> one H100 at {args.mfu[0]:.0%}-{args.mfu[1]:.0%} of {H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s "
          f"trains {gpu_pairs[0]:.0f}-{gpu_pairs[1]:.0f} pairs/s")
    for mode in ("worker", "device"):
        lo, hi = workers[mode]
        print(f"  degrade_on={mode}: {lo:.1f}-{hi:.1f} CPU workers (one core each, this machine) feed it")
    meta = {"torch": torch.__version__, "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "images": args.images, "side": args.side,
            "crop": args.crop, "batch": args.batch, "pairs": pairs, "rounds": args.rounds, "pack_s": pack_s}
    result = {"meta": meta, "rows": rows, "ratio_shards_over_folders": {
        m: rows[f"shards/{m}"]["pairs_per_s_per_worker"] / rows[f"folders/{m}"]["pairs_per_s_per_worker"]
        for m in ("worker", "device")},
        "ratio_per_round_median": {m: statistics.median(s / f for f, s in zip(rates[f"folders/{m}"], rates[f"shards/{m}"]))
                                   for m in ("worker", "device")},
        "gpu_estimate": {"tflop_per_pair": flop, "assumed_mfu": args.mfu, "h100_pairs_per_s": gpu_pairs,
                         "workers_per_h100": workers, "measured": False}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
