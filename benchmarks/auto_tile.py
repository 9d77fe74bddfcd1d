"""Where the untiled inference path stops scaling: untiled vs tiled time and peak memory by size.

The default model (tiny backbone, ×4) is run on random LQ images of growing size, each setting in
its own process (a clean peak RSS, ``ru_maxrss`` of the child) with a time limit: untiled, and
tiled the way automatic tiling tiles (UNet tiles of ``T`` latent pixels, VAE tiles of ``T·f``
image pixels, ``f`` the VAE's downscaling factor). Time per output megapixel that grows with the
size is the untiled path's quadratic self-attention (VAE mid-block at latent resolution, UNet at
half of it); the tiled path's stays flat. The table gives the latent pixel count of each size,
the unit the automatic-tiling threshold is set in (``--auto-tile``).

    python benchmarks/auto_tile.py [--sizes 64x48 128x96 ...] [--tiles 64 128] [--timeout 300] [--threads 1]
        [--repeats 1] [--untiled-max LATENT_PIXELS]

Each setting runs ``--repeats`` times in fresh processes; the table shows the fastest (the machine
may be shared) and the largest peak. Prints a table and writes JSON (``--out``, default
benchmarks/results/auto_tile.json).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_SIZES = ("64x48", "128x96", "192x144", "256x192", "320x240", "384x288", "512x384")


def worker(h: int, w: int, tile: int | None, threads: int) -> dict:
    """One timed pass (after the model is built) in this process; prints JSON."""
    torch.set_num_threads(threads)
    from lit_sr.config.build import build_generator
    from lit_sr.config.compose import compose
    from lit_sr.pipeline import LitSRPipeline

    cfg = compose([])  # the default model: tiny backbone, rgpa, wavelet colour fix
    torch.manual_seed(0)
    pipe = LitSRPipeline(build_generator(cfg, training=False), cfg, "cpu", "fp32", auto_tile=None)
    g = pipe.generator
    factor = g.vae_scale_factor
    if tile is not None:
        g.tile_latent, g.vae_tile = tile, tile * factor
    lq = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    pipe.images(lq, seed=0)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": seconds, "peak_rss_mib": peak / 1024, "model_rss_mib": base / 1024, "vae_factor": factor}


def run_one(h: int, w: int, tile: int | None, threads: int, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", f"{h}x{w}", "--threads", str(threads)]
    if tile is not None:
        cmd += ["--tile", str(tile)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "status": f"> {timeout} s (stopped)"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"seconds": None, "status": "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return {**json.loads(lines[-1]), "status": "ok"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="LQ sizes HxW (output ×4)")
    p.add_argument("--tiles", nargs="+", type=int, default=[64, 128], help="UNet tile sizes T (latent pixels)")
    p.add_argument("--timeout", type=int, default=300, help="seconds per setting")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per setting (the fastest is shown)")
    p.add_argument("--untiled-max", type=int, default=None, metavar="LATENT_PIXELS",
                   help="skip the untiled run above this many latent pixels (known to exceed --timeout)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "auto_tile.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tile", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        h, w = (int(v) for v in args.worker.split("x"))
        print(json.dumps(worker(h, w, args.tile, args.threads)))
        return
    rows = []
    print(f"{'LQ':>9} {'output':>11} {'latent px':>10} {'setting':>10} {'s':>8} {'s/out MP':>9} {'peak MiB':>9}")
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        for tile in [None, *args.tiles]:
            if tile is None and args.untiled_max is not None and (h * w) > args.untiled_max:  # f=4: latent = LQ
                r = {"seconds": None, "status": f"skipped (> {args.untiled_max} latent pixels)"}
            else:
                runs = [run_one(h, w, tile, args.threads, args.timeout) for _ in range(args.repeats)]
                done = [x for x in runs if x["seconds"] is not None]
                r = (min(done, key=lambda x: x["seconds"]) | {"peak_rss_mib": max(x["peak_rss_mib"] for x in done),
                                                               "all_seconds": [x["seconds"] for x in done]}
                     if done else runs[0])
            out_mp = h * 4 * w * 4 / 1e6
            factor = r.get("vae_factor", 4)
            row = {"lq": [h, w], "out": [h * 4, w * 4], "latent_pixels": (h * 4 // factor) * (w * 4 // factor),
                   "setting": "untiled" if tile is None else f"tile {tile}", **r}
            rows.append(row)
            sec = f"{r['seconds']:.1f}" if r["seconds"] is not None else r["status"]
            per = f"{r['seconds'] / out_mp:.1f}" if r["seconds"] is not None else "-"
            peak = f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else "-"
            print(f"{size:>9} {h * 4:>5}x{w * 4:<5} {row['latent_pixels']:>10} {row['setting']:>10} {sec:>8} {per:>9} "
                  f"{peak:>9}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": platform.platform(), "cpu_threads": args.threads,
                                          "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
