"""CoMat positive-area loss and cross-attention capture (TMG)."""
from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from lit_sr.config.build import build_generator
from lit_sr.model import attention_capture as capture
from lit_sr.model.clip_vocab import byte_level_clip_tokenizer
from losses.comat import CoMatLoss, positive_area_loss, token_indices


@pytest.fixture(scope="module")
def tok():
    return byte_level_clip_tokenizer()


def test_multi_token_noun_maps_to_all_its_tokens(tok):
    prompt = "an astronaut, a rocket, hotdog, astronaut"
    idx = token_indices(tok, prompt, "astronaut")
    ids = tok(prompt).input_ids
    assert len(tok(["astronaut"], add_special_tokens=False).input_ids[0]) == 9  # split into 9 byte tokens
    assert len(idx) == 18  # both occurrences, every token
    first, second = idx[:9], idx[9:]
    for run in (first, second):
        assert run == list(range(run[0], run[0] + 9))
        assert tok.decode([ids[i] for i in run]).strip() == "astronaut"
    assert token_indices(tok, prompt, "dog") == []  # not the end of "hotdog"
    assert token_indices(tok, prompt, "traffic light") == []
    two_words = token_indices(tok, "a traffic light, car", "traffic light")
    assert len(two_words) == len(tok("traffic light", add_special_tokens=False).input_ids)
    long_prompt = "x " * 80 + "astronaut"  # beyond CLIP's 77 tokens: truncated away
    assert token_indices(tok, long_prompt, "astronaut") == []


def test_attention_inside_mask_costs_zero_outside_one():
    h = w = 4
    masks = torch.zeros(1, 2, 16, 16, dtype=torch.bool)
    masks[0, 0, :, :8] = True  # left half
    probs = torch.full((1, h * w, 6), 1e-12)
    left = torch.tensor([x < 2 for _ in range(h) for x in range(w)])
    probs[0, left, 1] = 1.0 / left.sum()  # token 1: everything inside the mask
    probs[0, ~left, 2] = 1.0 / (~left).sum()  # token 2: everything outside
    probs[0, :, 3] = 1.0 / (h * w)  # token 3: uniform, half inside
    probs = probs[:, None]  # one head
    one = lambda t: positive_area_loss(probs, (h, w), masks, torch.tensor([0]), torch.tensor([0]), torch.tensor([t]))[0]
    assert float(one(1)) == pytest.approx(0.0, abs=1e-6)
    assert float(one(2)) == pytest.approx(1.0, abs=1e-6)
    assert float(one(3)) == pytest.approx(0.25, abs=1e-6)
    both = positive_area_loss(probs, (h, w), masks, torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([1, 2]))[0]
    assert both.tolist() == pytest.approx([0.0, 1.0], abs=1e-6)  # one loss per entity token


def test_ratio_per_head_and_per_word_weighting_follow_the_reference():
    """Head 0 puts 0.9 of token 0's mass inside the mask, head 1 only 0.1 outside: per head the ratios are
    1 and 0 (loss (0 + 1)/2 = 0.5); averaging the heads' attention first gives 0.9 (loss 0.01)."""
    from losses.comat import weighted_mean

    h = w = 2
    masks = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    masks[0, 0, :, 0] = True  # left column: positions 0 and 2
    heads = torch.zeros(1, 2, 4, 3)
    heads[0, 0, [0, 2], 0] = 0.45
    heads[0, 1, [1, 3], 0] = 0.05
    idx = (torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    per_head = positive_area_loss(heads, (h, w), masks, *idx)[0]
    mean_attn = positive_area_loss(heads, (h, w), masks, *idx, head_reduction="mean_attention")[0]
    assert per_head.tolist() == pytest.approx([0.5], abs=1e-6)
    assert mean_attn.tolist() == pytest.approx([0.01], abs=1e-6)
    # A 1-token noun with loss 1 and a 3-token noun with losses 0: words count equally (0.5), tokens do not (0.25).
    losses, word = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0, 1, 1, 1])
    assert float(weighted_mean(losses, word, "per_word")) == pytest.approx(0.5)
    assert float(weighted_mean(losses, word, "per_token")) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="head_reduction"):
        CoMatLoss(head_reduction="max")


def _batch(b: int = 2, crop: int = 32) -> dict:
    masks = torch.zeros(b, 3, crop, crop, dtype=torch.bool)
    masks[:, 0, :, : crop // 2] = True
    masks[:, 1, crop // 2 :] = True
    valid = torch.tensor([[True, True, False]] * b)
    return {"prompt": ["astronaut, rocket, sky"] * b, "nouns": [["astronaut", "rocket"]] * b, "masks": masks,
            "mask_valid": valid, "hq": torch.rand(b, 3, crop, crop)}


def _processors(denoiser) -> dict:
    return {n: m.processor for n, m in capture.capture_layers(denoiser).items()}


def test_capture_is_installed_only_with_the_loss_and_restored(make_cfg, tiny_bb):
    g = build_generator(make_cfg("conditioning=text"), tiny_bb)
    before = _processors(g.denoiser)
    assert before and all(isinstance(p, AttnProcessor2_0) for p in before.values())
    assert capture.installed_store(g.denoiser) is None  # no loss, nothing installed
    loss = CoMatLoss()
    with pytest.raises(RuntimeError, match="attach"):
        loss(None, _batch())
    loss.attach(g)
    assert all(isinstance(p, capture.CaptureProcessor) for p in _processors(g.denoiser).values())
    assert list(loss.parameters()) == [] and "_denoiser" not in dict(loss.named_modules())  # the denoiser is not its state
    loss.detach()
    after = _processors(g.denoiser)
    assert all(after[n] is before[n] for n in before) and capture.installed_store(g.denoiser) is None


def test_capture_keeps_outputs_and_records_only_with_gradients(make_cfg, tiny_bb):
    torch.manual_seed(0)
    g = build_generator(make_cfg("conditioning=text"), tiny_bb).train()
    lq, batch = torch.rand(2, 3, 8, 8), _batch()
    with torch.no_grad():
        ref = g.step(lq, batch=batch).sr
    store = capture.install(g.denoiser, downsample=[2])  # tiny UNet: its second level and mid block, 2x below the latent
    with torch.no_grad():
        g.step(lq, batch=batch)
    assert len(store.records) == 0  # validation-like passes are not captured
    out = g.step(lq, batch=batch)
    torch.testing.assert_close(out.sr.detach(), ref, rtol=1e-4, atol=1e-4)  # explicit softmax == SDPA
    rec = store.take(out.z_in)
    assert sorted(rec.layers) == ["down_blocks.1.attentions.0.transformer_blocks.0.attn2",
                                  "mid_block.attentions.0.transformer_blocks.0.attn2",
                                  "up_blocks.0.attentions.0.transformer_blocks.0.attn2",
                                  "up_blocks.0.attentions.1.transformer_blocks.0.attn2"]
    layer = rec.layers["mid_block.attentions.0.transformer_blocks.0.attn2"]
    assert layer.size == (4, 4) and layer.heads.shape[::2] == (2, 16) and layer.heads.shape[-1] == 77
    torch.testing.assert_close(layer.heads.sum(-1), torch.ones(layer.heads.shape[:3]))  # 32 px → 8² latent → 4² mid
    torch.testing.assert_close(layer.probs, layer.heads.mean(1))
    capture.remove(g.denoiser)
    with pytest.raises(ValueError, match="no text-attention layer"):
        capture.install(g.denoiser, layers=["no_such_block"])


def test_comat_gradients_reach_cross_attention_lora_and_lower_the_loss(make_cfg, tiny_bb):
    torch.manual_seed(0)
    g = build_generator(make_cfg("conditioning=text"), tiny_bb).train()
    loss = CoMatLoss(pixel_weight=0.5)
    loss.attach(g)
    lq, batch = torch.rand(2, 3, 8, 8), _batch()
    out = g.step(lq, hq=batch["hq"], batch=batch)
    value = loss(out, batch)
    assert 0.0 < float(value.detach()) and loss.last["entities"] == 2 * (9 + 6)  # astronaut: 9 tokens, rocket: 6
    value.backward()
    qk = {n: p.grad for n, p in g.denoiser.net.named_parameters()
          if "attn2" in n and ("to_q.lora_B" in n or "to_k.lora_B" in n)}
    assert qk and all(gr is not None and gr.abs().sum() > 0 for gr in qk.values())
    # Attention probabilities do not depend on the values: the last captured layer's V/out get nothing.
    last = "up_blocks.0.attentions.1.transformer_blocks.0.attn2"
    vo = [p.grad for n, p in g.denoiser.net.named_parameters() if n.startswith(last) and ("to_v.lora" in n or "to_out.0.lora" in n)]
    assert vo and all(gr is None or gr.abs().sum() == 0 for gr in vo)
    # Training on CoMat alone moves attention into the masks.
    params = [p for p in g.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    first = float(value.detach())
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        out = g.step(lq, hq=batch["hq"], batch=batch)
        loss(out, batch).backward()
        opt.step()
    with torch.enable_grad():
        out = g.step(lq, hq=batch["hq"], batch=batch)
        final = float(loss(out, batch).detach())
    assert final < first
    loss.detach()


def test_no_usable_noun_gives_zero_with_a_graph(make_cfg, tiny_bb):
    g = build_generator(make_cfg("conditioning=text"), tiny_bb).train()
    loss = CoMatLoss()
    loss.attach(g)
    batch = _batch()
    batch["mask_valid"][:] = False
    out = g.step(torch.rand(2, 3, 8, 8), batch=batch)
    value = loss(out, batch)
    assert float(value.detach()) == 0.0 and value.requires_grad
    batch["masks"] = batch["masks"][..., :16, :16]
    out = g.step(torch.rand(2, 3, 8, 8), batch=batch)
    with pytest.raises(ValueError, match="crop geometry"):
        loss(out, batch)
    loss.detach()


def test_requires_text_conditioning_and_a_mask_cache(make_cfg):
    from lit_sr.config.compose import facts_of

    text = facts_of(make_cfg("conditioning=text", "data.mask_cache=/cache"))
    empty = facts_of(make_cfg("conditioning=empty", "data.mask_cache=/cache"))
    no_cache = facts_of(make_cfg("conditioning=text"))
    assert CoMatLoss.requires(None, text) is None
    assert "conditioning=text" in CoMatLoss.requires(None, empty)
    assert "data.mask_cache" in CoMatLoss.requires(None, no_cache)


def test_gradient_checkpointing_keeps_gradients_and_works_with_the_capture(make_cfg, _tiny_backbone_template):
    """model.gradient_checkpointing recomputes UNet/VAE activations in backward: the same gradients
    (MSE + CoMat through the captured cross-attention) as without it."""
    import copy

    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        g = build_generator(make_cfg("conditioning=text", f"model.gradient_checkpointing={str(ckpt).lower()}"),
                            copy.deepcopy(_tiny_backbone_template)).train()
        assert g.denoiser.net.is_gradient_checkpointing == ckpt
        loss = CoMatLoss()
        loss.attach(g)
        lq, batch = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), _batch()
        out = g.step(lq, hq=batch["hq"], batch=batch)
        total = loss(out, batch) + torch.nn.functional.mse_loss(out.sr, batch["hq"])
        total.backward()
        grads.append({n: p.grad.clone() for n, p in g.named_parameters() if p.grad is not None})
        loss.detach()
    assert grads[0].keys() == grads[1].keys() and any("attn2" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)
