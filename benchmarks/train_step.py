"""Memory and time of an OSEDiff-style training step: shared-weights VSD vs three UNet copies.

One step = generator pass (LoRA on UNet + VAE encoder) → MSE + VSD → backward → generator AdamW
step → fake-score ε-MSE → backward → fake AdamW step, exactly as ``SRSystem`` runs it. The
variants differ only in where the two score networks live:

* ``shared`` — lit_sr's design: real = the generator's UNet with adapters disabled, fake = a
  ``vsd_fake`` LoRA on that same UNet (one copy of the base weights);
* ``copies`` — the reference-code layout (OSEDiff ``unet_fix`` / ``unet_update``): a frozen real
  UNet copy and a fake UNet copy with its own LoRA, beside the generator's UNet.

Each variant runs in a fresh subprocess. Reported per variant: the median step time after two
warm-up steps; **state bytes**, counted exactly (unique storages of all parameters, buffers and
optimizer state); and **peak memory** — on CPU the peak RSS (``ru_maxrss``) minus the RSS before
the models were built, on CUDA ``torch.cuda.max_memory_allocated``. Parts:

* ``tiny`` — the tiny random backbone on CPU (one thread, for stable timings);
* ``sd21`` — SD-2.1-base-sized UNet/VAE (diffusers' SD-2.1 configs, random init, no weights
  needed) at 512² HQ crops on CUDA, bf16 (frozen weights bf16, LoRA fp32, bf16 autocast),
  gradient checkpointing off and on; skipped with a message when CUDA is missing.

    python benchmarks/train_step.py [--part tiny|sd21|all] [--steps 5] [--out benchmarks/results/train_step.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# diffusers' UNet2DConditionModel / AutoencoderKL configs of stabilityai/stable-diffusion-2-1-base.
SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
)
SD21_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=768,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

def _fixed_conditioner(dim: int, length: int = 77):
    from lit_sr.model.conditioning.base import Conditioner

    class FixedConditioner(Conditioner):
        """A fixed random prompt embedding (stands in for the empty-prompt CLIP embedding)."""

        prompt = ""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("embedding", torch.randn(1, length, dim, generator=torch.Generator().manual_seed(0)),
                                 persistent=False)

        def attach(self, backbone) -> None:
            return None

        def forward(self, lq_up, batch=None):
            return self.embedding.to(lq_up.dtype).expand(lq_up.shape[0], -1, -1)

    return FixedConditioner()


def _backbone(part: str, device: torch.device):
    from lit_sr.model.backbone import Backbone, schedule_alphas_cumprod, tiny_backbone

    if part == "tiny":
        return tiny_backbone(text_encoder=False)
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET).to(device, torch.bfloat16).requires_grad_(False)
    vae = AutoencoderKL(**SD21_VAE).to(device, torch.bfloat16).requires_grad_(False)
    return Backbone(unet=unet, vae=vae, alphas_cumprod=schedule_alphas_cumprod(), name="sd21-random")


def _lora_to_fp32(module: torch.nn.Module) -> None:
    # peft gives new adapters the base layer's dtype; trainable LoRA stays fp32 (as the references do).
    for n, p in module.named_parameters():
        if "lora_" in n and p.dtype != torch.float32:
            p.data = p.data.float()


def build(variant: str, part: str, device: torch.device, checkpointing: bool):
    """(generator, vsd term, [score UNet copies]) for one variant."""
    from lit_sr.model import adapters as lora_lib
    from lit_sr.model.generator import OneStepSR
    from lit_sr.model.noise.uniform import UniformNoise
    from losses.vsd import VSDLoss

    bb = _backbone(part, device)
    copies = []
    if variant == "copies":  # copies of the *pretrained* UNet, made before any adapter exists
        real_unet = copy.deepcopy(bb.unet)
        fake_unet = copy.deepcopy(bb.unet)
        lora_lib.add_adapter(fake_unet, "vsd_fake", lora_lib.LoRASpec(rank=4))
        copies = [real_unet, fake_unet]
    targets = list(lora_lib.OSEDIFF_UNET_TARGETS)
    lora = {"unet": {"main": {"rank": 4, "target_modules": targets}},
            "vae": {"main": {"rank": 4, "target_modules": list(lora_lib.OSEDIFF_VAE_TARGETS)}}}
    gen = OneStepSR(bb, noise=UniformNoise(999), conditioner=_fixed_conditioner(bb.cross_attention_dim), lora=lora,
                    scale=4).to(device)
    lora_lib.set_trainable(gen.unet, ["main"])
    lora_lib.set_trainable(gen.vae, ["main"])
    vsd = VSDLoss() if variant == "shared" else _CopiesVSD(*copies)
    vsd.attach(gen)
    vsd.to(device)
    for m in [gen.unet, gen.vae, *copies]:
        _lora_to_fp32(m)
        if checkpointing:
            m.enable_gradient_checkpointing()
    return gen, vsd, copies


def _copies_vsd_class():
    from lit_sr.model import adapters as lora_lib
    from losses.vsd import VSDLoss

    class CopiesVSD(VSDLoss):
        """The same VSD math on separate real/fake UNet copies (the reference-code layout)."""

        def __init__(self, real_unet, fake_unet) -> None:
            super().__init__()
            self.real_unet, self.fake_unet = real_unet, fake_unet

        def attach(self, generator, backbone=None) -> None:
            self._generator = (generator,)
            self.negative_embedding = generator.conditioner.embedding.detach().float()

        def own_parameters(self):
            return list(lora_lib.adapter_parameters(self.fake_unet, "vsd_fake").values())

        def _run(self, unet, z, t, ehs):
            return unet(z.to(unet.dtype), t, encoder_hidden_states=ehs.to(unet.dtype)).sample.float()

        def real_eps(self, z_t, t, ehs):
            neg = self.negative_embedding.to(z_t.device).expand(z_t.shape[0], -1, -1)
            eps_u, eps_c = self._run(self.real_unet, torch.cat([z_t, z_t]), torch.cat([t, t]),
                                     torch.cat([neg, ehs])).chunk(2)
            return eps_u + self.cfg_scale * (eps_c - eps_u)

        def fake_eps(self, z_t, t, ehs):
            return self._run(self.fake_unet, z_t, t, ehs)

    return CopiesVSD


def _CopiesVSD(real_unet, fake_unet):
    return _copies_vsd_class()(real_unet, fake_unet)


# ---------------------------------------------------------------------------------------------
# one measured variant (runs in its own process)
# ---------------------------------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _state_bytes(modules: list, optimizers: list) -> int:
    seen, total = set(), 0
    tensors = [t for m in modules for t in [*m.parameters(), *m.buffers()]]
    tensors += [v for o in optimizers for s in o.state.values() for v in s.values() if torch.is_tensor(v)]
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def run_variant(spec: dict) -> dict:
    device = torch.device(spec["device"])
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    base_rss = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gen, vsd, copies = build(spec["variant"], spec["part"], device, spec["checkpointing"])
    gen.train()
    gen_params = [p for p in gen.parameters() if p.requires_grad]
    own = vsd.own_parameters()
    opt_g = torch.optim.AdamW(gen_params, lr=5e-5, weight_decay=1e-2)
    opt_f = vsd.configure_optimizer(own)
    b, hq_size = spec["batch"], spec["hq_size"]
    g = torch.Generator(device=device).manual_seed(0)
    lq = torch.rand(b, 3, hq_size // 4, hq_size // 4, device=device, generator=g)
    hq = torch.rand(b, 3, hq_size, hq_size, device=device, generator=g)
    cast = (torch.autocast(device.type, dtype=torch.bfloat16) if spec["bf16"] else torch.autocast(device.type, enabled=False))

    def step() -> None:
        batch = {"lq": lq, "hq": hq, "rng": g}
        for p in own:
            p.requires_grad_(False)
        with cast:
            out = gen.step(lq, hq=hq, batch=batch, generator=g)
            loss = torch.nn.functional.mse_loss(out.sr.float(), hq) + vsd(out, batch)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen_params, 1.0)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        for p in own:
            p.requires_grad_(True)
        with cast:
            aux = vsd.aux_loss(out, batch)
        opt_f.zero_grad(set_to_none=True)
        aux.backward()
        torch.nn.utils.clip_grad_norm_(own, 1.0)
        opt_f.step()
        opt_f.zero_grad(set_to_none=True)

    times = []
    for i in range(spec["steps"] + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:  # warm-up: allocator, optimizer state, kernels
            times.append(time.perf_counter() - t0)
    switch_ms = None
    if spec["variant"] == "shared":  # the price of one copy: a real-score switch (disable, re-enable, flags)
        t0 = time.perf_counter()
        for _ in range(20):
            with vsd._adapters([]):
                pass
        switch_ms = (time.perf_counter() - t0) / 20 * 1e3
    result = {**spec, "step_s_median": statistics.median(times), "step_s_all": times, "adapter_switch_ms": switch_ms,
              "state_bytes": _state_bytes([gen, vsd, *copies], [opt_g, opt_f]),
              "unet_param_copies": 1 + len(copies)}
    if device.type == "cuda":
        result["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
        result["peak_what"] = "torch.cuda.max_memory_allocated"
        result["device_name"] = torch.cuda.get_device_name(device)
    else:
        result["peak_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss)
        result["peak_what"] = "peak RSS (ru_maxrss) minus RSS before building the models"
        result["device_name"] = platform.processor() or platform.machine()
    return result


def _spawn(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1") if spec["device"] == "cpu" else dict(os.environ)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['variant']} ({spec['part']}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(n: int) -> str:
    return f"{n / 2**20:9.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["tiny", "sd21", "all"], default="all")
    p.add_argument("--steps", type=int, default=5, help="measured steps per variant (after 2 warm-up steps)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 2 tiny, 1 sd21)")
    p.add_argument("--hq-size", type=int, default=None, help="HQ crop (default: 64 tiny, 512 sd21)")
    p.add_argument("--device", default="cuda", help="device of the sd21 part")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_step.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_variant(json.loads(args.worker))))
        return 0
    os.environ.setdefault("LIT_SR_CACHE", str(ROOT / ".cache" / "lit_sr"))
    specs = []
    if args.part in ("tiny", "all"):
        for variant in ("shared", "copies"):
            specs.append(dict(part="tiny", variant=variant, device="cpu", bf16=False, checkpointing=False,
                              batch=args.batch or 2, hq_size=args.hq_size or 64, steps=args.steps))
    if args.part in ("sd21", "all"):
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            print("sd21 part skipped: CUDA is not available on this machine (run it on a GPU: --part sd21)")
        else:
            for ckpt in (False, True):
                for variant in ("shared", "copies"):
                    specs.append(dict(part="sd21", variant=variant, device=args.device, bf16=True, checkpointing=ckpt,
                                      batch=args.batch or 1, hq_size=args.hq_size or 512, steps=args.steps))
    results = []
    for spec in specs:
        results.append(_spawn(spec))
        r = results[-1]
        print(f"  measured {r['part']:5s} {r['variant']:7s} ckpt={r['checkpointing']!s:5s} "
              f"{r['step_s_median']:.3f} s/step", flush=True)
    print(f"\n{'part':6s} {'ckpt':5s} {'variant':8s} {'s/step':>8s} {'state MiB':>10s} {'peak MiB':>10s} {'UNets':>6s} "
          f"{'switch ms':>9s}")
    for r in results:
        sw = f"{r['adapter_switch_ms']:9.2f}" if r["adapter_switch_ms"] is not None else f"{'-':>9s}"
        print(f"{r['part']:6s} {r['checkpointing']!s:5s} {r['variant']:8s} {r['step_s_median']:8.3f} "
              f"{_mib(r['state_bytes']):>10s} {_mib(r['peak_bytes']):>10s} {r['unet_param_copies']:6d} {sw}")
    ratios = []
    keys = sorted({(r["part"], r["checkpointing"]) for r in results})
    for part, ckpt in keys:
        pair = {r["variant"]: r for r in results if r["part"] == part and r["checkpointing"] == ckpt}
        if len(pair) == 2:
            s, c = pair["shared"], pair["copies"]
            ratios.append({"part": part, "checkpointing": ckpt,
                           "state_shared_over_copies": s["state_bytes"] / c["state_bytes"],
                           "peak_shared_over_copies": s["peak_bytes"] / c["peak_bytes"],
                           "time_shared_over_copies": s["step_s_median"] / c["step_s_median"]})
            r = ratios[-1]
            print(f"{part} ckpt={ckpt}: shared/copies  state {r['state_shared_over_copies']:.3f}  "
                  f"peak {r['peak_shared_over_copies']:.3f}  time {r['time_shared_over_copies']:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "ratios": ratios, "python": platform.python_version(),
                               "torch": torch.__version__}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
