"""Adapter export: diffusers-format LoRA that StableDiffusionPipeline loads, and exact round trips."""
from __future__ import annotations

import copy

import torch
from omegaconf import OmegaConf

from lit_sr.config.build import build_generator
from lit_sr.config.loading import load_generator
from lit_sr.model.export import DIFFUSERS_FILE, export_adapter


def _perturb_adapters(generator) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in generator.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_export_round_trip_gives_identical_outputs(make_cfg, tiny_bb, tmp_path):
    cfg = make_cfg()
    generator = build_generator(cfg, copy.deepcopy(tiny_bb)).eval()
    _perturb_adapters(generator)
    export_adapter(generator, tmp_path / "adapter", OmegaConf.to_container(cfg))
    loaded, _ = load_generator(tmp_path / "adapter")
    lq = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(lq), generator(lq), rtol=0, atol=0)


def test_diffusers_pipeline_loads_exported_lora(make_cfg, tiny_bb, tmp_path):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    cfg = make_cfg()
    generator = build_generator(cfg, copy.deepcopy(tiny_bb)).eval()
    _perturb_adapters(generator)
    export_adapter(generator, tmp_path, OmegaConf.to_container(cfg))
    assert (tmp_path / DIFFUSERS_FILE).exists()
    fresh = copy.deepcopy(tiny_bb)
    pipe = StableDiffusionPipeline(
        vae=fresh.autoencoder.net, text_encoder=fresh.prompts.text_encoder, tokenizer=fresh.tokenizer,
        unet=fresh.denoiser.net,
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.load_lora_weights(tmp_path, weight_name=DIFFUSERS_FILE, adapter_name="main")
    z = torch.randn(1, 4, 8, 8)
    t = torch.tensor([999])
    ehs = torch.randn(1, 77, fresh.denoiser.cond_width)
    with torch.no_grad():
        ours = generator.denoiser.net(z, t, encoder_hidden_states=ehs).sample
        theirs = pipe.unet(z, t, encoder_hidden_states=ehs).sample
        generator.adapters.activate([], [])
        base = generator.denoiser.net(z, t, encoder_hidden_states=ehs).sample
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert (ours - base).abs().max() > 1e-4  # the adapter really changes the output


def test_a_format_2_export_loads_with_its_old_names(make_cfg, tiny_bb, tmp_path):
    """Exports written before backbone families (``unet.``/``vae.`` tensor names, ``lora.unet``, the SD builders
    in ``lit_sr.model.backbone``) load into today's generator with the same outputs."""
    import yaml
    from safetensors.torch import load_file, save_file

    from lit_sr.model.export import CONFIG_FILE, STATE_FILE

    cfg = make_cfg()
    generator = build_generator(cfg, copy.deepcopy(tiny_bb)).eval()
    _perturb_adapters(generator)
    folder = export_adapter(generator, tmp_path / "adapter", OmegaConf.to_container(cfg))
    state = load_file(str(folder / STATE_FILE))
    old = {k.replace("denoiser.net.", "unet.", 1).replace("vae.net.", "vae.", 1): v for k, v in state.items()}
    save_file(old, str(folder / STATE_FILE), metadata={"format": "lit_sr", "version": "2"})
    config = yaml.safe_load((folder / CONFIG_FILE).read_text())
    config["lora"]["unet"] = config["lora"].pop("denoiser")
    config["lora_targets"] = {"unet": config["lora_targets"]["denoiser"], "vae": config["lora_targets"]["vae"]}
    config["backbone"]["_target_"] = "lit_sr.model.backbone.tiny_backbone"
    config["backbone"].pop("prediction_type")
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config))
    loaded, _ = load_generator(folder)
    lq = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(lq), generator(lq), rtol=0, atol=0)
