"""The tiny VAEs: shipped trained for every recipe the configs use, and the script that makes them still runs."""
from __future__ import annotations

import pytest
import torch

from lit_sr.config.compose import compose
from lit_sr.make_tiny_vae import main
from lit_sr.model.tiny_vae import SHIPPED, recipe_key


@pytest.mark.parametrize("backbone", ["tiny", "tiny16", "tiny_sd3"])
def test_the_configs_recipes_ship_trained(backbone):
    node = compose([f"backbone={backbone}"]).backbone
    channels = int(node.get("latent_channels", 16 if backbone == "tiny_sd3" else 4))
    folder = SHIPPED / recipe_key(int(node.seed), int(node.vae_pretrain_steps), channels)
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file(), (
        f"{folder} is missing: python -m lit_sr.make_tiny_vae --latent-channels {channels} "
        f"--steps {node.vae_pretrain_steps}")


def test_the_script_trains_a_recipe_that_round_trips(tmp_path, capsys):
    from diffusers import AutoencoderKL

    assert main(["--latent-channels", "16", "--steps", "3", "--threads", "1", "--out", str(tmp_path / "vae")]) == 0
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert vae.config.latent_channels == 16 and vae.config.shift_factor is not None
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert vae.decode(vae.encode(x).latent_dist.mode()).sample.shape == x.shape
    assert main(["--steps", "3", "--out", str(tmp_path / "vae")]) == 2  # an existing folder is refused
    assert "exists" in capsys.readouterr().err
