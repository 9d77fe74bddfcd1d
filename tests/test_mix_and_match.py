"""Every noise strategy × conditioner × modulation composes, builds and trains on the tiny backbone."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from lit_sr.config.build import build_generator
from lit_sr.config.compose import CONF_DIR
from lit_sr.errors import ConfigError

NOISES = sorted(p.stem for p in (CONF_DIR / "noise").glob("*.yaml"))  # a new strategy joins by its YAML
CONDITIONERS = ["empty", "text", "vpim"]
MODULATIONS = [None, "lqfm"]




@pytest.mark.parametrize("noise, cond, mod", list(itertools.product(NOISES, CONDITIONERS, MODULATIONS)))
def test_combination_trains_two_steps(make_cfg, tiny_bb, noise, cond, mod):
    # VAE-encoder LoRA is independent of these components (covered in test_generator); leaving it
    # out keeps 18 builds fast.
    overrides = [f"noise={noise}", f"conditioning={cond}", "backbone.vision_encoder=true", "lora.vae=null"]
    if mod is not None:
        overrides.append(f"modulation={mod}")
    g = build_generator(make_cfg(*overrides), tiny_bb).train()
    if g.noise.needs_calibration:  # the training system calibrates on the data before step 1 (tests/test_ldg.py)
        g.noise.calibrate(torch.linspace(0.9, 1.0, 8))
    params = [p for p in g.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in g.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params, lr=1e-3)
    torch.manual_seed(0)
    hq = torch.rand(2, 3, 64, 64)
    batch = {"lq": F.interpolate(hq, scale_factor=0.25, mode="area"), "hq": hq, "prompt": ["a wall", "a tree"]}
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        out = g.step(batch["lq"], hq=hq, batch=batch, generator=gen)
        loss = F.mse_loss(out.sr, hq)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and out.sr.shape == hq.shape
    moved = {n for n, p in g.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert any("lora_" in n for n in moved)
    if mod is not None:
        assert any(n.startswith("modulation.") for n in moved)
    if cond == "vpim":
        assert any(n.startswith("conditioner.") for n in moved)
    # inference with the strategy's own knob values
    g.eval()
    with torch.no_grad():
        for knob in g.noise.knob_values()[-1:]:  # the strongest setting
            assert g(batch["lq"][:1], knob=g.noise.parse_knob(None if knob is None else str(knob))).shape == (1, 3, 64, 64)


def test_impossible_combination_is_rejected_at_compose(make_cfg):
    with pytest.raises(ConfigError) as exc:
        make_cfg("noise=rgpa", "conditioning=vpim", "modulation=lqfm")  # tiny backbone without a vision encoder
    msg = str(exc.value)
    assert "conditioning=vpim" in msg and "backbone.vision_encoder" in msg and "\n" not in msg


def test_unknown_modulation_is_rejected(make_cfg):
    with pytest.raises(ConfigError, match="unknown modulation 'sft'; available: lqfm"):
        make_cfg("modulation=sft")
