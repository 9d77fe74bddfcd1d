"""The complete export and LitSRPipeline: everything trained in one folder, the CLI's pixels exactly."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lit_sr import infer
from lit_sr.config.build import build_generator
from lit_sr.model.export import export_adapter
from lit_sr.pipeline import LitSRPipeline

PRESETS = {
    "default": [],
    "osediff": ["experiment=osediff"],
    "codsr": ["experiment=codsr"],
    "rcod": ["experiment=rcod", "backbone.vision_encoder=true"],
    "ifcsr": ["experiment=ifcsr"],
}


def _trained_export(make_cfg, tiny_bb, path, overrides):
    """An export whose every trained tensor is non-trivial (zero-initialised layers perturbed, as training does)."""
    cfg = make_cfg(*overrides)
    g = build_generator(cfg, copy.deepcopy(tiny_bb))  # a fresh copy: a generator adds adapters to its backbone
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in g.model_state_dict().items():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return export_adapter(g, path, OmegaConf.to_container(cfg), metrics={"val/psnr": 21.5}), g


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_pipeline_reproduces_the_cli_exactly_and_the_export_is_complete(preset, make_cfg, tiny_bb, tmp_path):
    model, g = _trained_export(make_cfg, tiny_bb, tmp_path / "model", PRESETS[preset])
    manifest = json.loads((model / "lit_sr_export.json").read_text())
    assert manifest["denoiser_adapters"] == g.denoiser_adapters and manifest["vae_adapters"] == g.vae_adapters
    expected_modules = {"codsr": ["modulation"], "rcod": ["conditioner"]}.get(preset, [])
    assert manifest["modules"] == expected_modules
    card = (model / "README.md").read_text()
    assert "## The fidelity–realism control" in card and "val/psnr | 21.5000" in card
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    Image.fromarray((np.random.default_rng(0).random((12, 16, 3)) * 255).astype(np.uint8)).save(photo)
    extra = ["--gamma", "0.3"] if preset == "ifcsr" else []
    assert infer.main(["--model", str(model), "--input", str(photo.parent), "--output", str(tmp_path / "out"),
                       *extra]) == 0
    written = next((tmp_path / "out").glob("photo*.png"))
    pipe = LitSRPipeline.from_pretrained(model, device="cpu")
    ours = pipe(photo, gamma=0.3 if preset == "ifcsr" else None, seed=0)
    diff = np.abs(np.asarray(ours, np.int16) - np.asarray(Image.open(written), np.int16))
    assert diff.max() == 0
    # the export holds the trained tensors exactly (not the training-only VSD fake score)
    state = pipe.generator.model_state_dict()
    assert not any("vsd_fake" in k for k in state)
    for k, v in g.model_state_dict().items():
        assert torch.equal(state[k], v), k


def test_adapter_weights_are_a_second_dial(make_cfg, tiny_bb, tmp_path):
    model, _ = _trained_export(make_cfg, tiny_bb, tmp_path / "codsr", PRESETS["codsr"])
    pipe = LitSRPipeline.from_pretrained(model, device="cpu")
    lq = np.asarray(Image.fromarray((np.random.default_rng(3).random((12, 16, 3)) * 255).astype(np.uint8)))
    full = np.asarray(pipe(lq, seed=0), np.int16)
    pipe.set_adapters(["alignment"], [0.0])  # the stage-2 (semantic) LoRA off
    off = np.asarray(pipe(lq, seed=0), np.int16)
    with pipe.generator.adapters.using(denoiser=["main"]):  # the same network without the adapter at all
        without = np.asarray(pipe(lq, seed=0), np.int16)
    assert np.array_equal(off, without) and np.abs(off - full).max() > 0
    with pytest.raises(Exception, match="unknown denoiser adapter"):
        pipe.set_adapters(["nope"], [1.0])


def test_fused_adapters_give_the_unfused_output(make_cfg, tiny_bb, tmp_path):
    model, _ = _trained_export(make_cfg, tiny_bb, tmp_path / "m", [])
    lq = np.asarray(Image.fromarray((np.random.default_rng(4).random((12, 16, 3)) * 255).astype(np.uint8)))
    plain = LitSRPipeline.from_pretrained(model, device="cpu")
    fused = LitSRPipeline.from_pretrained(model, device="cpu", fuse=True)
    a = plain.images(torch.from_numpy(lq.transpose(2, 0, 1).astype(np.float32) / 255)[None])[0][""]
    b = fused.images(torch.from_numpy(lq.transpose(2, 0, 1).astype(np.float32) / 255)[None])[0][""]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # merged weights: equal up to float rounding
    endpoint, _ = _trained_export(make_cfg, tiny_bb, tmp_path / "e", PRESETS["ifcsr"])
    with pytest.raises(Exception, match="endpoint"):
        LitSRPipeline.from_pretrained(endpoint, device="cpu", fuse=True)


@pytest.mark.parametrize("options", [{"channels_last": True}, {"compile": "eager"}, {"fuse": True, "channels_last": True}])
def test_speed_options_keep_the_output(make_cfg, tiny_bb, tmp_path, options):
    """channels-last memory, torch.compile (the plumbing, with the eager backend; inductor is what the
    benchmark times) and fusing change how the output is computed, not what it is."""
    model, _ = _trained_export(make_cfg, tiny_bb, tmp_path / "m", [])
    lq = torch.from_numpy((np.random.default_rng(5).random((3, 12, 16))).astype(np.float32))[None]
    a = LitSRPipeline.from_pretrained(model, device="cpu").images(lq, seed=0)[0][""]
    fast = LitSRPipeline.from_pretrained(model, device="cpu", **options)
    b = fast.images(lq, seed=0)[0][""]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    if "compile" in options:
        assert hasattr(fast.generator.denoiser.net.forward, "_torchdynamo_orig_callable") or "compile" in repr(
            fast.generator.denoiser.net.forward)
