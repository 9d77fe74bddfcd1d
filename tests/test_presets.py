"""Experiment presets compose from the shared parts and train (2 steps) on the tiny backbone."""
from __future__ import annotations

import pytest
import torch

import train
from lit_sr.config.compose import CONF_DIR, compose
from lit_sr.config.loading import load_generator

PRESETS = ["osediff", "codsr", "rcod", "ifcsr"]
FAST = ["trainer.max_steps=2", "trainer.enable_progress_bar=false", "+trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1", "data.batch_size=1", "data.epoch_size=4", "data.crop_size=32",
        "data.val_crop=32", "val.metrics=[psnr]", "val.num_sample_images=0"]
# What each tiny run needs besides the preset, and the stage it must end in.
EXTRA = {
    "osediff": ([], 0),
    "codsr": (["stages.0.steps=1", "stages.1.steps=0", "export.enabled=false"], 2),  # warm-up, then the cross-attn stage
    "rcod": (["backbone.vision_encoder=true", "export.enabled=false"], 0),  # VPIM needs a vision encoder
    "ifcsr": (["stages.0.steps=1", "export.enabled=false"], 1),  # fidelity, then the γ-blend stage
}


def test_every_preset_file_is_listed():
    regimes = ("mem", "distill_vae")  # trainers over a trained model, not presets
    assert sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if p.stem not in regimes) == sorted(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_sets_the_recipe_not_the_backbone(name):
    cfg = compose([f"experiment={name}", *EXTRA[name][0]])
    assert cfg.backbone._target_.endswith("tiny_sd")
    assert cfg.optim.lr == 5e-5 and cfg.data.batch_size == 4
    ranks = {k: v.rank for k, v in cfg.lora.denoiser.items()}
    assert ranks == {"osediff": {"main": 4}, "rcod": {"main": 4}, "codsr": {"main": 16},
                     "ifcsr": {"fidelity": 4, "realism": 4}}[name]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tiny", "tiny_sd3"])  # both families: UNet/ε and MM-DiT/flow matching
@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_two_steps_on_the_tiny_backbone(name, backbone, tmp_path):
    extra, last_stage = EXTRA[name]
    trainer = train.run([f"experiment={name}", f"backbone={backbone}", f"run_dir={tmp_path}", *FAST, *extra])
    system = trainer.lightning_module
    assert trainer.global_step == 2 and system.stage_index == last_stage
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    if name != "ifcsr":
        assert "train/vsd" in metrics and "train/vsd_aux" in metrics
    if name == "osediff":  # a VSD-trained export loads into a generator built from its config
        generator, _ = load_generator(tmp_path / "adapter")
        lq = torch.rand(1, 3, 8, 8)
        with torch.no_grad():
            system.generator.eval()
            torch.testing.assert_close(generator(lq), system.generator(lq))
    if name == "ifcsr":
        assert "train/vgg_realism" in metrics and system.stage.blend is not None
