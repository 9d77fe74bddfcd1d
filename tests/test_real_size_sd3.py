"""SD3.5-medium at its real widths (reduced depth), from a folder written by stock diffusers (all slow).

The folder is ``StableDiffusion3Pipeline(...).save_pretrained(...)`` with random weights: the
published SD3.5-medium transformer config at 2 blocks (1536 wide, 24 heads, dual attention, RMS
q/k norm, 384-patch position table), the 16-channel VAE with its scaling and shift factors, CLIP-L
and CLIP-G/14 text towers at full width with 2 layers and the real CLIP tokenizer, and no T5 —
plus a ViT-H/14 ``image_encoder/`` (2 layers) for VPIM. Every paper preset trains 2 steps on it
through ``train.py backbone=sd3``, ``lit_sr.infer`` runs on an export (plain and tiled),
``LitSRPipeline`` reproduces it, and the exported LoRA loads into a stock ``StableDiffusion3Pipeline``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_real_size import MAX_RSS_GB, TRAIN, _last_losses, run_measured

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
LAYERS, TEXT_LAYERS = 2, 2


def _build_stock_folder(out: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from lit_sr.model.clip_vocab import EOS, read_bpe, write_clip_tokenizer
    from lit_sr.model.random_backbone import (
        CLIP_G_TEXT,
        CLIP_L_TEXT,
        SD3_VAE,
        model_fields,
        sd3_transformer_config,
        write_vision_encoder,
    )

    def text(cfg: dict) -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(CLIPTextConfig(**{**model_fields(cfg), "num_hidden_layers": TEXT_LAYERS}))

    torch.manual_seed(0)
    bpe = read_bpe()
    toks = out.parent / f".{out.name}-tokenizers"
    tok_l = CLIPTokenizer.from_pretrained(write_clip_tokenizer(toks / "l", bpe, pad_token=EOS))
    tok_g = CLIPTokenizer.from_pretrained(write_clip_tokenizer(toks / "g", bpe, pad_token="!"))
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**sd3_transformer_config("sd35-medium", LAYERS)),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=AutoencoderKL(**SD3_VAE), text_encoder=text(CLIP_L_TEXT), tokenizer=tok_l,
        text_encoder_2=text(CLIP_G_TEXT), tokenizer_2=tok_g, text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(out)
    shutil.rmtree(toks, ignore_errors=True)
    write_vision_encoder(out / "image_encoder", seed=3, layers=TEXT_LAYERS)


@pytest.fixture(scope="session")
def sd35_dir() -> Path:
    """The stock-diffusers SD3.5-medium folder, built once per builder version and cached."""
    import diffusers

    source = hashlib.sha1(Path(__file__).read_bytes().split(b"@pytest.fixture")[0] + diffusers.__version__.encode()
                          + (ROOT / "lit_sr/model/random_backbone.py").read_bytes()).hexdigest()[:10]
    root = Path(os.environ["LIT_SR_CACHE"]) / "random_models"
    folder = root / f"sd35-medium-stock-L{LAYERS}-{source}"
    if (folder / "model_index.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("sd35-medium-stock-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{folder.name}.{os.getpid()}"
    _build_stock_folder(tmp)
    os.replace(tmp, folder)
    return folder


PRESETS = {  # each paper preset's 2-step run (the stage it ends in is checked by tests/test_presets.py)
    "osediff": ["experiment=osediff", "trainer.max_steps=2"],
    "codsr": ["experiment=codsr", "stages.0.steps=1", "stages.1.steps=0", "trainer.max_steps=2"],
    "rcod": ["experiment=rcod", "trainer.max_steps=2"],
    "ifcsr": ["experiment=ifcsr", "stages.0.steps=1", "trainer.max_steps=2"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sd35_dir):
    runs: dict[str, tuple[Path, float]] = {}

    def _train(name: str) -> tuple[Path, float]:
        if name not in runs:
            run_dir = tmp_path_factory.mktemp(f"sd35_{name}")
            extra = [f"backbone.vision_encoder={sd35_dir / 'image_encoder'}"] if name == "rcod" else []
            _, rss = run_measured(["train.py", f"run_dir={run_dir}", "backbone=sd3", f"backbone.path={sd35_dir}",
                                   *TRAIN, *PRESETS[name], *extra], timeout=900)
            runs[name] = (run_dir, rss)
        return runs[name]

    return _train


def test_stock_folder_loads_with_the_published_shapes(sd35_dir):
    from lit_sr.model.families.sd3 import load_sd3
    from lit_sr.model.parameterisation import FlowMatching

    bb = load_sd3(str(sd35_dir))
    d = bb.denoiser
    assert d.family == "mmdit" and isinstance(bb.parameterisation, FlowMatching) and bb.parameterisation.shift == 3.0
    assert (d.cond_width, d.pooled_width, d.modulation_channels, d.patch, d.max_latent_size) == (4096, 2048, 1536, 2, 768)
    assert bb.latent_channels == 16 and bb.vae_scale_factor == 8
    assert (bb.autoencoder.scaling_factor, bb.autoencoder.shift_factor) == (1.5305, 0.0609)
    cond = bb.prompts.encode(["a photo of a cat"])
    assert cond.tokens.shape == (1, 77 + 256, 4096) and cond.pooled.shape == (1, 2048)  # no T5: 256 zero positions
    assert bb.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_trains_on_sd35(name, trained, record_property):
    run_dir, rss = trained(name)
    record_property("peak_rss_gb", round(rss, 2))
    assert rss < MAX_RSS_GB
    losses = _last_losses(run_dir)
    assert np.isfinite(losses["train/loss"])
    state = load_file(str(run_dir / "adapter" / "lit_sr_state.safetensors"))
    manifest = json.loads((run_dir / "adapter" / "lit_sr_export.json").read_text())
    assert manifest["family"] == "mmdit" and manifest["parameterisation"]["kind"] == "flow"
    joint = [v.shape for k, v in state.items() if k.startswith("denoiser.") and "attn.add_k_proj.lora_A" in k]
    assert joint and all(s[1] == 1536 for s in joint)  # LoRA on the text stream of the 1536-wide joint attention
    if name == "codsr":  # stage 2's LoRA sits on the image-query → text path only
        alignment = {k.split(".attn.")[1].split(".lora_A")[0] for k in state if ".alignment." in k and "lora_A" in k}
        assert alignment == {"to_q", "add_k_proj", "add_v_proj", "to_out.0"}
        assert any(k.startswith("modulation.") for k in state)  # LQFM after the patch embedding
    if name == "rcod":  # VPIM: 1280-wide ViT-H tokens → the 4096-wide joint-attention input, pooled 2048
        assert state["conditioner.mlp.2.weight"].shape == (4096, 1280)
        assert state["conditioner.pool.weight"].shape == (2048, 1280)


def test_mem_trains_on_the_rcod_sd35_generator(trained, sd35_dir, tmp_path):
    run_dir, _ = trained("rcod")
    _, rss = run_measured(["train.py", "experiment=mem", f"run_dir={tmp_path / 'mem'}",
                           f"mem.generator_export={run_dir / 'adapter'}", "trainer.max_steps=2", *TRAIN], timeout=900)
    assert rss < MAX_RSS_GB and (tmp_path / "mem" / "mem.safetensors").is_file()


def test_infer_plain_and_tiled_and_the_pipeline_equals_the_cli(trained, tmp_path):
    from lit_sr.pipeline import LitSRPipeline

    run_dir, _ = trained("osediff")
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(src / "x.png")
    outs = {}
    for name, flags in (("plain", []), ("tiled", ["--tile", "16", "--vae-tile", "128"])):
        out = tmp_path / name
        _, rss = run_measured(["-m", "lit_sr.infer", "--model", str(run_dir / "adapter"), "--input", str(src),
                               "--output", str(out), "--seed", "0", *flags], timeout=900)
        assert rss < MAX_RSS_GB
        outs[name] = np.asarray(Image.open(out / "x.png"), np.int16)
        assert outs[name].shape == (192, 160, 3)
    pipe = LitSRPipeline.from_pretrained(run_dir / "adapter")
    ours = np.asarray(pipe(src / "x.png", seed=0), np.int16)
    assert np.array_equal(ours, outs["plain"])
    # Random weights: the two agree only in size (each tile sees its own centre crop of the position table).
    assert outs["tiled"].std() > 0 and not np.array_equal(outs["tiled"], outs["plain"])


def test_exported_lora_loads_into_a_stock_sd3_pipeline(trained, sd35_dir):
    from diffusers import StableDiffusion3Pipeline

    from lit_sr.config.loading import load_generator

    run_dir, _ = trained("osediff")
    pipe = StableDiffusion3Pipeline.from_pretrained(sd35_dir, text_encoder_3=None, tokenizer_3=None,
                                                    local_files_only=True)
    pipe.load_lora_weights(run_dir / "adapter")
    generator, _ = load_generator(run_dir / "adapter")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 16, 8, 8, generator=g)
    tokens, pooled = torch.randn(1, 12, 4096, generator=g), torch.randn(1, 2048, generator=g)
    t = torch.tensor([1000.0])
    args = dict(hidden_states=z, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=t)
    with torch.no_grad():
        theirs = pipe.transformer(**args).sample
        ours = generator.denoiser.net(**args).sample
        generator.adapters.activate([], [])
        base = generator.denoiser.net(**args).sample
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert (ours - base).abs().max() > 1e-5  # two training steps already move the output: the LoRA is in
