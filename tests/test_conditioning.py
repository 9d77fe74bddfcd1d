"""Text and VPIM conditioners: shapes, prompt sources, frozen encoders (no gradient, not saved)."""
from __future__ import annotations

import json

import pytest
import torch

from lit_sr.config.build import build_generator
from lit_sr.errors import ConfigError
from lit_sr.model.conditioning.null import NullConditioner
from lit_sr.model.conditioning.text import TextConditioner, load_prompt_file
from lit_sr.model.conditioning.vpim import CLIP_MEAN, CLIP_STD, VPIMConditioner


# ------------------------------------------------------------------ VPIM
def test_vpim_tokens_have_cross_attention_width(tiny_bb):
    c = VPIMConditioner()
    c.attach(tiny_bb)
    vis = tiny_bb.vision_encoder.config
    out = c(torch.rand(2, 3, 64, 64) * 2 - 1)
    tokens = 1 + (vis.image_size // vis.patch_size) ** 2  # class token + patches
    assert out.tokens.shape == (2, tokens, tiny_bb.denoiser.cond_width) and out.pooled is None  # a UNet takes no pooled vector
    single = VPIMConditioner(hidden=0)  # the reference code's single projection
    single.attach(tiny_bb)
    assert isinstance(single.mlp, torch.nn.Linear) and single(torch.zeros(1, 3, 32, 32)).tokens.shape[-1] == 32


def test_vpim_preprocessing_resizes_and_normalises(tiny_bb):
    c = VPIMConditioner(image_size=24)
    c.attach(tiny_bb)
    px = c.pixel_values(torch.zeros(1, 3, 64, 80))  # gray 0.5 in [-1, 1] terms
    assert px.shape == (1, 3, 24, 24)
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(px[0, :, 5, 7], expected)
    raw = VPIMConditioner(normalize=False)
    raw.attach(tiny_bb)
    assert raw.pixel_values(torch.full((1, 3, 64, 64), -0.5)).allclose(torch.tensor(-0.5))


def test_vpim_frozen_encoder_gets_no_gradient_and_is_not_saved(make_cfg, tiny_bb):
    g = build_generator(make_cfg("conditioning=vpim", "backbone.vision_encoder=true", "lora.vae=null"), tiny_bb).train()
    encoder = tiny_bb.vision_encoder
    assert not encoder.training  # stays in eval although the generator trains
    out = g.step(torch.rand(2, 3, 16, 16))
    out.sr.mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    mlp = [p for n, p in g.named_parameters() if n.startswith("conditioner.")]
    assert mlp and all(p.requires_grad and p.grad is not None for p in mlp)
    state = g.trainable_state_dict()
    assert any(k.startswith("conditioner.mlp.") for k in state)
    assert not any("vision" in k or "encoder.layers" in k for k in state if k.startswith("conditioner."))


def test_vpim_without_vision_encoder_is_rejected(make_cfg):
    with pytest.raises(ConfigError, match="vision_encoder") as exc:
        make_cfg("conditioning=vpim")
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------ text
@pytest.fixture
def text_cond(tiny_bb):
    c = TextConditioner(prompt="a photo", negative_prompt="blurry")
    c.attach(tiny_bb)
    return c


def test_text_embeddings_per_image(text_cond, tiny_bb):
    x = torch.zeros(3, 3, 32, 32)
    out = text_cond(x, {"prompt": ["a cat", "a dog", "a photo"]})
    L = tiny_bb.tokenizer.model_max_length
    out = out.tokens
    assert out.shape == (3, L, tiny_bb.prompts.text_encoder.config.hidden_size)  # padded to max length (77)
    assert not torch.allclose(out[0], out[1])
    torch.testing.assert_close(out[2], text_cond.embedding.tokens[0])  # same prompt, same embedding
    null = NullConditioner("a cat")
    null.attach(tiny_bb)
    torch.testing.assert_close(out[0], null.embedding.tokens[0])
    fixed = text_cond(x, None).tokens
    assert fixed.shape == out.shape and torch.equal(fixed[0], text_cond.embedding.tokens[0])
    neg = text_cond.negative_embedding(4).tokens
    assert neg.shape == (4, L, out.shape[-1]) and not torch.allclose(neg[0], fixed[0])


def test_text_prompt_file_lookup_by_path_stem(tiny_bb, tmp_path):
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text("name,prompt\nimg_001.png,a red car\nimg_002,\"grass, trees\"\n")
    assert load_prompt_file(csv_file) == {"img_001": "a red car", "img_002": "grass, trees"}
    json_file = tmp_path / "prompts.json"
    json_file.write_text(json.dumps({"img_001": "a red car", "sub/img_002.jpg": "grass, trees"}))
    assert load_prompt_file(json_file) == {"img_001": "a red car", "img_002": "grass, trees"}
    c = TextConditioner(prompt="fallback", prompt_file=str(json_file))
    c.attach(tiny_bb)
    batch = {"path": ["/data/a/img_002.png", "/data/b/img_001.png", "/data/unknown.png"]}
    assert c.prompts_for(batch, 3) == ["grass, trees", "a red car", "fallback"]
    assert c.prompts_for({"prompt": ["given"] * 3, **batch}, 3) == ["given"] * 3  # batch prompts win
    out = c(torch.zeros(3, 3, 32, 32), batch)
    torch.testing.assert_close(out.tokens[2], c.embedding.tokens[0])


def test_text_prompt_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        TextConditioner(prompt_file=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_prompt_file(bad)
    short = tmp_path / "short.csv"
    short.write_text("only_one_column\n")
    with pytest.raises(ConfigError, match="two columns"):
        load_prompt_file(short)
    other = tmp_path / "p.txt"
    other.write_text("x")
    with pytest.raises(ConfigError, match=".csv or .json"):
        load_prompt_file(other)


def test_text_encoder_is_frozen_and_not_saved(make_cfg, tiny_bb):
    g = build_generator(make_cfg("conditioning=text", "lora.vae=null"), tiny_bb).train()
    assert g.conditioner.uses_text and not tiny_bb.prompts.text_encoder.training
    out = g.step(torch.rand(2, 3, 16, 16), batch={"prompt": ["a cat", "stone wall"]})
    out.sr.mean().backward()
    assert all(p.grad is None for p in tiny_bb.prompts.text_encoder.parameters())
    assert not any(k.startswith("conditioner.") for k in g.trainable_state_dict())


def test_text_without_text_encoder_is_rejected(make_cfg):
    with pytest.raises(ConfigError, match="text encoder"):
        make_cfg("conditioning=text", "backbone.text_encoder=false")


def test_validation_and_sweeps_use_per_image_prompts(make_cfg, tiny_bb, tmp_path, monkeypatch):
    """Validation, fr-curve/evaluate sweeps and inference pass the batch, so a prompt file applies there too."""
    from lit_sr.config.systems import build_system
    from lit_sr.metrics.sweep import KnobSweep

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"img_001": "a red car"}))
    system = build_system(make_cfg("conditioning=text", f"conditioning.prompt_file={prompts}", "val.metrics=[psnr]"),
                          backbone=tiny_bb)
    g = system.generator.eval()
    seen: list[list[str]] = []
    original = g.conditioner.prompts_for
    monkeypatch.setattr(g.conditioner, "prompts_for", lambda batch, n: seen.append(original(batch, n)) or seen[-1])
    lq = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        system.validation_step({"lq": lq, "hq": torch.rand(1, 3, 32, 32), "name": ["img_001"]}, 0)
        KnobSweep.for_generator(g).run(g, lq, {"path": ["/val/img_001.png"]})
        g(lq)
    assert seen == [["a red car"], ["a red car"], [""]]
