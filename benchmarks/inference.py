"""One-step inference time and peak memory at 128 → 512 (×4).

* tiny backbone on CPU (always);
* an SD-2.1-base-sized random-initialised backbone on a GPU, bf16 vs fp32 (skipped with a message
  when no CUDA device is present; no weights are needed — the architecture is what costs).

Prints a table and writes JSON (``--out``). Quote ratios from one run; absolute times depend on
the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lit_sr.model.adapters import OSEDIFF_VAE_TARGETS  # noqa: E402
from lit_sr.model.backbone import Backbone, schedule_alphas_cumprod, tiny_backbone  # noqa: E402
from lit_sr.model.conditioning.null import NullConditioner  # noqa: E402
from lit_sr.model.generator import OneStepSR  # noqa: E402
from lit_sr.model.noise.uniform import UniformNoise  # noqa: E402

LORA = {"unet": {"main": {"rank": 4}}, "vae": {"main": {"rank": 4, "target_modules": OSEDIFF_VAE_TARGETS}}}


def sd21_backbone() -> Backbone:
    """SD-2.1-base architecture (diffusers' published config) with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lit_sr.model.backbone import byte_level_clip_tokenizer

    unet = UNet2DConditionModel(
        sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        block_out_channels=(320, 640, 1280, 1280),
    )
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=768)
    tok = byte_level_clip_tokenizer()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=4096,
                                      num_hidden_layers=2, num_attention_heads=16, projection_dim=1024,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id))
    for m in (unet, vae, te):
        m.requires_grad_(False).eval()
    return Backbone(unet=unet, vae=vae, alphas_cumprod=schedule_alphas_cumprod(), text_encoder=te, tokenizer=tok,
                    name="sd21-random")


def measure(generator: OneStepSR, device: torch.device, dtype: torch.dtype | None, repeats: int) -> dict:
    lq = torch.rand(1, 3, 128, 128, device=device)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)
    times = []
    with torch.no_grad(), ctx:
        generator(lq)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = generator(lq)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    assert out.shape[-1] == 512
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"median_s": statistics.median(times), "peak_bytes": int(peak),
            "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/inference.json")
    args = ap.parse_args()
    results: dict = {}
    cpu = torch.device("cpu")
    g = OneStepSR(tiny_backbone(), UniformNoise(), NullConditioner(), lora=LORA).eval()
    results["tiny_cpu_fp32"] = measure(g, cpu, None, args.repeats)
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        big = OneStepSR(sd21_backbone(), UniformNoise(), NullConditioner(), lora=LORA).eval().to(dev)
        results["device"] = torch.cuda.get_device_name()
        results["sd21_gpu_fp32"] = measure(big, dev, None, args.repeats)
        results["sd21_gpu_bf16"] = measure(big, dev, torch.bfloat16, args.repeats)
        r = results
        r["bf16_vs_fp32_time_ratio"] = r["sd21_gpu_bf16"]["median_s"] / r["sd21_gpu_fp32"]["median_s"]
        r["bf16_vs_fp32_memory_ratio"] = r["sd21_gpu_bf16"]["peak_bytes"] / r["sd21_gpu_fp32"]["peak_bytes"]
    else:
        print("no CUDA device: the SD-2.1-size GPU measurement (bf16 vs fp32) is skipped")
    print(f"{'setting':<16} {'median s':>10} {'peak MiB':>10}  peak measured as")
    for k, v in results.items():
        if isinstance(v, dict):
            print(f"{k:<16} {v['median_s']:>10.4f} {v['peak_bytes'] / 2**20:>10.1f}  {v['peak_kind']}")
    for k in ("bf16_vs_fp32_time_ratio", "bf16_vs_fp32_memory_ratio"):
        if k in results:
            print(f"{k}: {results[k]:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
