"""Backbone families behind one interface: the MM-DiT (SD3) family against stock diffusers, and what
every method part needs from a denoiser (prediction, modulation point, attention capture, LoRA, export)."""
from __future__ import annotations

import pytest
import torch

from lit_sr.config.build import build_generator
from lit_sr.model import attention_capture as capture
from lit_sr.model.condition import Condition
from lit_sr.model.families.sd3 import TINY_T5_TOKENS, MMDiTDenoiser
from lit_sr.model.parameterisation import FlowMatching


@pytest.fixture
def sd3(tiny_sd3_bb):
    return tiny_sd3_bb


def _stock_pipeline(bb):
    """diffusers' own SD3 pipeline around the same networks (no T5, as ``text_encoder_3=None`` loads it)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    prompts = bb.prompts
    return StableDiffusion3Pipeline(
        transformer=bb.denoiser.net, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=bb.autoencoder.net,
        text_encoder=prompts._clips[0].module, tokenizer=prompts._tokenizers[0],
        text_encoder_2=prompts._clips[1].module, tokenizer_2=prompts._tokenizers[1],
        text_encoder_3=None, tokenizer_3=None)


def test_tiny_sd3_is_an_sd35_shaped_flow_backbone(sd3):
    d = sd3.denoiser
    assert isinstance(d, MMDiTDenoiser) and d.family == "mmdit"
    assert isinstance(sd3.parameterisation, FlowMatching) and sd3.parameterisation.shift == 3.0
    assert (d.size_multiple, d.patch, d.cond_width, d.pooled_width, d.modulation_channels) == (2, 2, 96, 64, 32)
    assert sd3.latent_channels == 16 and sd3.autoencoder.shift_factor != 0.0  # SD3's normalised 16-channel latent
    assert any(b.attn2 is not None for b in d.net.transformer_blocks)  # SD3.5's dual attention
    assert d.net.config.qk_norm == "rms_norm" and d.max_latent_size == 128


def test_prompt_states_equal_diffusers_sd3_pipeline_without_t5(sd3):
    pipe = _stock_pipeline(sd3)
    prompts = ["a cat on a wall", ""]
    ours = sd3.prompts.encode(prompts)
    with torch.no_grad():
        theirs, _, pooled, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=TINY_T5_TOKENS)
    assert ours.tokens.shape == (2, 77 + TINY_T5_TOKENS, 96) and ours.pooled.shape == (2, 64)
    torch.testing.assert_close(ours.tokens, theirs.float())
    torch.testing.assert_close(ours.pooled, pooled.float())
    assert torch.equal(ours.tokens[:, 77:], torch.zeros_like(ours.tokens[:, 77:]))  # the zero T5 block
    assert torch.equal(ours.tokens[:, :77, 80:], torch.zeros_like(ours.tokens[:, :77, 80:]))  # CLIP 32 + 48 padded to 96


def test_denoiser_forward_is_the_transformer_and_modulation_acts_on_patch_tokens(sd3):
    d = sd3.denoiser
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 16, 12, 8, generator=g)
    cond = sd3.prompts.encode(["a", "b"])
    t = sd3.parameterisation.model_timestep(torch.tensor([999, 250]))
    with torch.no_grad():
        ref = d.net(hidden_states=z, encoder_hidden_states=cond.tokens, pooled_projections=cond.pooled, timestep=t).sample
        torch.testing.assert_close(d(z, t, cond), ref)
        zero = torch.zeros(2, d.modulation_channels, 6, 4)
        torch.testing.assert_close(d(z, t, cond, (zero, zero)), ref)  # γ = β = 0: the identity
        seen = []
        handle = d.net.pos_embed.register_forward_hook(lambda m, a, out: seen.append(out))
        gamma = torch.randn(2, d.modulation_channels, 6, 4, generator=g)
        d(z, t, cond, (gamma, zero))
        plain = d.net.pos_embed(z)
        handle.remove()
    # token n of the (6, 4) patch grid is scaled by 1 + γ at row n // 4, column n % 4
    expected = plain * (1 + gamma.flatten(2).transpose(1, 2))
    torch.testing.assert_close(seen[0], expected)
    with pytest.raises(ValueError, match="pooled"):
        d(z, t, Condition(cond.tokens))


def test_joint_attention_capture_keeps_outputs_and_records_image_to_text(sd3):
    d = sd3.denoiser
    points = d.capture_points()
    assert sorted(points) == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]  # not the image-only attn2
    z = torch.randn(1, 16, 8, 8)
    cond = sd3.prompts.encode(["a cat"])
    t = torch.tensor([500.0])
    with torch.no_grad():
        before = d(z, t, cond)
    store = capture.install(d)
    with torch.enable_grad():
        after = d(z, t, cond)
    rec = store.take(z)
    capture.remove(d)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert rec is not None and sorted(rec.layers) == sorted(points)
    for layer in rec.layers.values():
        assert layer.size == (4, 4) and layer.heads.shape == (1, 2, 16, 77 + TINY_T5_TOKENS)
        total = layer.heads.sum(-1)
        assert bool((total > 0).all() and (total < 1).all())  # a share of a joint softmax over image + text keys


def test_sd3_generator_one_step_uses_flow_x0_and_tiles_past_the_position_table(make_cfg, sd3):
    from lit_sr.model.families.sd3 import tiny_sd3

    g = build_generator(make_cfg("backbone=tiny_sd3"), sd3).eval()
    with torch.no_grad():
        out = g.step(torch.rand(1, 3, 16, 16))
    torch.testing.assert_close(out.z_hat, out.z_lq - out.pred)  # σ_999 = 1: ẑ = z_L − v̂
    # A position table of 16 patches takes latents up to 32 in one call; a 72×40 latent is tiled.
    small = build_generator(make_cfg("backbone=tiny_sd3"), tiny_sd3(transformer={"pos_embed_max_size": 16})).eval()
    assert small.denoiser.max_latent_size == 32
    seen = []
    small.denoiser.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[-2:])))
    with torch.no_grad():
        sr = small(torch.rand(1, 3, 72, 40))
    assert sr.shape == (1, 3, 288, 160) and len(seen) > 1 and max(max(s) for s in seen) <= 32


def test_comat_on_joint_attention_reaches_the_image_query_and_text_key_lora(make_cfg, sd3):
    from losses.comat import CoMatLoss

    torch.manual_seed(0)
    g = build_generator(make_cfg("backbone=tiny_sd3", "conditioning=text"), sd3).train()
    loss = CoMatLoss()
    loss.attach(g)
    b, crop = 2, 32
    masks = torch.zeros(b, 2, crop, crop, dtype=torch.bool)
    masks[:, 0, :, : crop // 2] = True
    masks[:, 1, crop // 2:] = True
    batch = {"prompt": ["astronaut, rocket"] * b, "nouns": [["astronaut", "rocket"]] * b, "masks": masks,
             "mask_valid": torch.ones(b, 2, dtype=torch.bool), "hq": torch.rand(b, 3, crop, crop)}
    out = g.step(torch.rand(b, 3, 8, 8), hq=batch["hq"], batch=batch)
    value = loss(out, batch)
    assert 0.0 < float(value.detach()) < 1.0 and loss.last["entities"] == b * (9 + 6)
    value.backward()
    grads = {n: p.grad for n, p in g.denoiser.net.named_parameters()
             if ".attn." in n and ("to_q.lora_B" in n or "add_k_proj.lora_B" in n)}
    assert grads and all(gr is not None and gr.abs().sum() > 0 for gr in grads.values())
    loss.detach()
    assert capture.installed_store(g.denoiser) is None


def test_v_prediction_backbone_is_read_and_its_x0_is_diffusers(make_cfg, tmp_path):
    """A v-prediction UNet (SD-2.1 768-v) is not treated as ε: ẑ is diffusers' own v → x₀ conversion."""
    from diffusers import DDPMScheduler

    from lit_sr.model.parameterisation import VPrediction

    cfg = make_cfg("backbone.prediction_type=v_prediction", "noise=uniform")
    g = build_generator(cfg).eval()
    assert isinstance(g.parameterisation, VPrediction)
    with torch.no_grad():
        out = g.step(torch.rand(1, 3, 16, 16))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type="v_prediction", clip_sample=False)
    expected = sched.step(out.pred, 999, out.z_in).pred_original_sample
    torch.testing.assert_close(out.z_hat, expected, rtol=1e-5, atol=1e-5)
    eps_view = build_generator(make_cfg("noise=uniform")).eval()  # the same pass read as ε differs
    with torch.no_grad():
        as_eps = eps_view.parameterisation.to_x0(out.pred, out.z_in, out.t)
    assert (as_eps - out.z_hat).abs().max() > 1e-2
