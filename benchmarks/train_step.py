"""Peak memory of one training step of each paper preset at SD-2.1-base and SD3.5-medium size, and the
design that keeps separate copies of the base network.

Every configuration is the real system (``build_system`` on the composed preset, with a real-size
backbone — ``--family sd21``: SD-2.1-base's 865 M-parameter UNet, 8× VAE, the 23-layer OpenCLIP-H
text tower; ``--family sd35``: SD3.5-medium's 2.5 B-parameter MM-DiT (24 blocks), 16-channel VAE,
CLIP-L + CLIP-G/14 text towers, no T5 (its 256 positions are zeros, as diffusers without T5) — and
for ``rcod`` the ViT-H vision tower) traced with fake tensors (:mod:`lit_sr.model.tracing`): two
optimizer steps of the same calls ``SRSystem.training_step`` makes (generator pass, every active
loss term, backward, clip, AdamW step; then each term with its own network — VSD's fake score,
the GAN discriminator — on the detached outputs, backward inside ``only_trainable`` and each
network's gradient clip, as ``training_step`` does). The peak counts what is resident (frozen
and trained weights, buffers, and the frozen encoders a conditioner holds outside the module
tree: the CLIP text tower, VPIM's vision tower) plus every storage allocated during the two steps
(activations, gradients, optimizer state); a view or an in-place update of a storage that
existed before (a weight's ``.t()`` in ``F.linear``, AdamW's update of a parameter) is not counted
again. Every stage of a preset is measured and the largest is reported.

What the trace leaves out or stubs (fake tensors have no values, so an operation whose output
shape or Python result depends on values cannot run; :func:`_trace_stubs` answers these two at
their call sites only, any other one fails the trace):

* ``torch.bincount`` in ``LDGNoise.timesteps`` (rcod): the per-group sample counts logged each
  epoch, n int64. Replaced by a scatter-add of the same size (the groups are clamped to
  [0, n−1], so the real result has exactly ``minlength`` entries);
* the γ range check in ``blend`` (ifcsr's blend stage): γ is ``torch.rand``, in [0, 1) by
  construction; the check's (B,) temporaries are allocated and counted, only ``bool()`` of the
  answer is stubbed ("in range");
* ``training_step``'s logging and non-finite guards (``.detach()``, ``bool(isfinite(...))`` on
  scalars) and Lightning itself are not called: scalars, nothing that changes the peak.

LDG's M_min/M_max come from a data pass before step 1 in training; the trace sets the fixed
values 0.3/0.9 (the group each sample lands in does not change what is allocated).

``precision``: ``fp32`` (everything float32) or ``bf16`` (frozen weights bfloat16, trained
weights float32, bf16 autocast: ``backbone.dtype=bf16 trainer.precision=bf16-mixed``).
``ckpt``: ``model.gradient_checkpointing``. The ``copies`` column is the same osediff step with
two more frozen base networks resident — OSEDiff's reference layout (``unet_fix`` for the real
score, ``unet_update`` for the fake one; on SD3.5 the same two MM-DiT copies) — and ``ours/copies``
the ratio of the two peaks.

    python benchmarks/train_step.py [--family sd21|sd35] [--presets osediff codsr] [--batches 1 4] [--size 512]

Each configuration runs in its own process (about 10–60 s each on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PRESETS = ("osediff", "codsr", "rcod", "ifcsr")
GB = 1e9


def _cfg(preset: str, precision: str, ckpt: bool, batch: int, size: int, family: str = "sd21"):
    from lit_sr.config.compose import compose

    backbone = ["backbone=tiny_sd3"] if family == "sd35" else []  # the MM-DiT family's config (LoRA lists)
    overrides = [*backbone, f"experiment={preset}", f"model.gradient_checkpointing={str(ckpt).lower()}",
                 f"data.batch_size={batch}", f"data.crop_size={size}", "val=null", "checkpoint=last"]
    if precision == "bf16":
        overrides += ["backbone.dtype=bf16", "trainer.precision=bf16-mixed"]
    if preset == "rcod":
        overrides.append("backbone.vision_encoder=true")  # the traced backbone brings its own ViT-H
    return compose(overrides)


def _batch(size: int, batch: int, scale: int = 4) -> dict:
    import torch

    return {"lq": torch.rand(batch, 3, size // scale, size // scale), "hq": torch.rand(batch, 3, size, size),
            "prompt": ["a photo of a building by the sea, high quality"] * batch,
            "path": [f"img{i}.png" for i in range(batch)]}


def _step(system, opts: list, batch: dict, autocast) -> None:
    """The calls of SRSystem.training_step (one optimizer step, no accumulation), without Lightning."""
    import torch

    from lit_sr.model.adapters import only_trainable

    def clip(opt, value) -> None:
        if value:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], float(value))

    gen_opt, term_opts = opts[0], iter(opts[1:])
    term_opt = {n: next(term_opts) for n in system.losses if system._own[n]}
    with autocast():
        out = system.forward_train(batch)
        loss_batch = {**batch, "rng": system.noise_generator}
        total = sum(w * system.losses[n](out, loss_batch) for n, w in system._active_terms.items())
    total.backward()
    clip(gen_opt, system.grad_clip)
    gen_opt.step()
    gen_opt.zero_grad(set_to_none=True)
    for name in [n for n in system._active_terms if system._own[n]]:
        # backward inside only_trainable, as training_step does: a checkpointed block recomputed in
        # backward must see the same requires_grad flags as in its forward
        with only_trainable(system, system._own[name]):
            with autocast():
                aux = system.losses[name].aux_loss(out, loss_batch)
            aux.backward()
        own_clip = system.losses[name].grad_clip
        clip(term_opt[name], system.grad_clip if own_clip is None else own_clip)
        term_opt[name].step()
        term_opt[name].zero_grad(set_to_none=True)


def _trace_stubs():
    """A dispatch mode answering the two data-dependent reads of the traced step, each only at its own
    call site (found by the code object on the Python stack); any other one still raises.

    * ``torch.bincount`` in ``LDGNoise.timesteps`` (rcod): the epoch's per-group sample counts, a
      bookkeeping tensor of n int64 (the output length depends on the values for fake tensors). Its
      groups are clamped to [0, n−1], so the result has ``minlength`` entries: counted here with a
      scatter-add of that size, which allocates the same n int64;
    * ``bool(…)`` of the γ range check in ``blend`` (ifcsr's blend stage): γ comes from ``torch.rand``,
      in [0, 1) by construction, so the check passes ("no γ out of range"). The check's (B,) bool
      temporaries are still allocated and counted; only the read of the answer is stubbed.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from lit_sr.model.blend import blend
    from lit_sr.model.noise.ldg import LDGNoise

    aten = torch.ops.aten

    def bincount(x, weights=None, minlength=0):
        assert weights is None and minlength > 0, "the traced bincount needs minlength (its output length)"
        return torch.zeros(minlength, dtype=torch.long, device=x.device).scatter_add_(0, x, torch.ones_like(x))

    sites = {(aten.bincount.default, LDGNoise.timesteps.__code__): bincount,
             (aten._local_scalar_dense.default, blend.__code__): lambda x: False}

    class Stubs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (aten.bincount.default, aten._local_scalar_dense.default):
                frame = sys._getframe()
                while frame is not None:
                    stub = sites.get((func, frame.f_code))
                    if stub is not None:
                        return stub(*args, **kwargs)
                    frame = frame.f_back
            return func(*args, **kwargs)

    return Stubs()


def _held_modules(system) -> list:
    """Frozen encoders the system runs but does not register as children (``FrozenModule``: the CLIP
    text tower of ``conditioning=text``, VPIM's vision tower); on the GPU with the rest."""
    from lit_sr.model.conditioning.frozen import FrozenModule

    return [v.module for m in system.modules() for v in vars(m).values() if isinstance(v, FrozenModule)]


def measure(spec: dict) -> dict:
    """One configuration in this process: the peak over the preset's stages."""
    from contextlib import nullcontext

    import torch

    from lit_sr.config.systems import build_system
    from lit_sr.model.tracing import PeakTracker, fake_mode, sd3_backbone, sd21_backbone, state_bytes

    torch.manual_seed(0)
    family = spec.get("family", "sd21")
    cfg = _cfg(spec["preset"], spec["precision"], spec["ckpt"], spec["batch"], spec["size"], family)
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else torch.float32

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else nullcontext()

    t0 = time.perf_counter()
    with fake_mode():
        build = sd3_backbone if family == "sd35" else sd21_backbone
        bb = build(dtype, vision=spec["preset"] == "rcod")
        system = build_system(cfg, backbone=bb)
        system.generator.noise.apply_calibration({"m_min": 0.3, "m_max": 0.9})  # LDG: no data pass in a trace
        extra = [copy.deepcopy(bb.denoiser.net) for _ in range(2)] if spec["copies"] else []  # OSEDiff's unet_fix/update
        system.train()
        opts, _ = system.configure_optimizers()
        stages = []
        for index in range(len(system.plan)):
            system.enter_stage(index)
            tracker = PeakTracker()
            resident = state_bytes(system, *_held_modules(system), *extra)
            with _trace_stubs(), tracker:
                for _ in range(2):  # the second step runs with the optimizer state of the first
                    _step(system, opts, _batch(spec["size"], spec["batch"]), autocast)
            stages.append({"stage": system.plan[index].name, "peak_bytes": resident + tracker.peak,
                           "resident_bytes": resident, "step_peak_bytes": tracker.peak})
            for opt in opts:  # the next stage trains other parameters: start its state afresh
                opt.state.clear()
    top = max(stages, key=lambda s: s["peak_bytes"])
    return {**spec, **top, "stages": stages, "trace_s": time.perf_counter() - t0}


def _spawn(spec: dict) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = proc.stderr.strip().splitlines() or ["failed"]
        raised = [ln for ln in err if re.match(r"[A-Za-z_][\w.]*(Error|Exception)\b", ln)]  # the exception's line
        return {**spec, "error": (raised or err)[-1][:300]}
    return json.loads(lines[-1])


def table(results: list[dict]) -> str:
    rows = ["| preset | batch | precision | checkpointing | peak GB | largest stage | fits 24 GB |",
            "|---|---:|---|---|---:|---|---|"]
    for r in results:
        if r.get("copies"):
            continue
        if "error" in r:
            rows.append(f"| {r['preset']} | {r['batch']} | {r['precision']} | {r['ckpt']} | error: {r['error']} | | |")
            continue
        rows.append(f"| {r['preset']} | {r['batch']} | {r['precision']} | {'on' if r['ckpt'] else 'off'} | "
                    f"{r['peak_bytes'] / GB:.1f} | {r['stage']} | {'yes' if r['peak_bytes'] < 24e9 else 'no'} |")
    return "\n".join(rows)


def copies_lines(results: list[dict]) -> list[str]:
    out = []
    ours = {(r["batch"], r["precision"], r["ckpt"]): r for r in results
            if r["preset"] == "osediff" and not r.get("copies") and "error" not in r}
    for r in results:
        if r.get("copies") and "error" not in r and (r["batch"], r["precision"], r["ckpt"]) in ours:
            mine = ours[(r["batch"], r["precision"], r["ckpt"])]
            out.append(f"osediff batch {r['batch']} {r['precision']} ckpt={'on' if r['ckpt'] else 'off'}: ours "
                       f"{mine['peak_bytes'] / GB:.1f} GB, three base copies {r['peak_bytes'] / GB:.1f} GB, "
                       f"ours/copies {mine['peak_bytes'] / r['peak_bytes']:.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=["sd21", "sd35"], default="sd21", help="SD-2.1-base UNet or SD3.5-medium MM-DiT")
    p.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--ckpt", nargs="+", choices=["off", "on"], default=["off", "on"])
    p.add_argument("--size", type=int, default=512, help="HQ crop size (the LQ is size / 4)")
    p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/train_step[_sd35].json)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0
    os.environ.setdefault("LIT_SR_CACHE", str(ROOT / ".cache" / "lit_sr"))
    specs = [dict(preset=pr, batch=b, precision=pc, ckpt=ck == "on", size=args.size, copies=False, family=args.family)
             for pr in args.presets for b in args.batches for pc in args.precisions for ck in args.ckpt]
    if "osediff" in args.presets:
        specs += [dict(s, copies=True) for s in specs if s["preset"] == "osediff"]
    results = []
    for spec in specs:
        results.append(_spawn(spec))
        r = results[-1]
        what = f"error: {r['error']}" if "error" in r else f"{r['peak_bytes'] / GB:.2f} GB ({r['trace_s']:.0f} s)"
        print(f"  {r['preset']:8s} b={r['batch']} {r['precision']} ckpt={r['ckpt']!s:5s} copies={r['copies']!s:5s} "
              f"{what}", flush=True)
    text = table(results)
    print("\n" + text + "\n")
    for line in copies_lines(results):
        print(line)
    suffix = "" if args.family == "sd21" else f"_{args.family}"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"train_step{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "size": args.size, "family": args.family, "table": text,
                               "copies": copies_lines(results)}, indent=2))
    print(f"wrote {out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
