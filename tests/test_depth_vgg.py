"""Depth-weighted VGG loss (IFCSR): weights by depth, normalisation, distances, frozen extractor."""
from __future__ import annotations

import pytest
import torch

from lit_sr.config.build import build_component
from lit_sr.errors import ConfigError
from losses.depth_vgg import DepthVGGLoss, depth_weights


def test_fidelity_weights_fall_and_realism_weights_grow_with_depth():
    for n in (1, 3, 5):
        fid, real = depth_weights(n, 7.0, "fidelity"), depth_weights(n, 7.0, "realism")
        assert abs(float(fid.sum()) - 1) < 1e-12 and abs(float(real.sum()) - 1) < 1e-12
        assert bool((fid[1:] < fid[:-1]).all()) and bool((real[1:] > real[:-1]).all())
    fid = depth_weights(5, 7.0, "fidelity")
    l = torch.arange(1, 6, dtype=torch.float64)
    torch.testing.assert_close(fid, 7.0 ** (5 - l) / (7.0 ** (5 - l)).sum())  # k^(L-l), normalised
    torch.testing.assert_close(depth_weights(5, 7.0, "realism"), fid.flip(0))  # k^(l-1) = reversed
    torch.testing.assert_close(float(fid[0] / fid[1]), 7.0)


@pytest.mark.parametrize("distance", ["l1", "l2", "lpips"])
def test_loss_is_zero_for_identical_images_and_trains_the_prediction(distance):
    loss = DepthVGGLoss(mode="realism", layers=["relu1_2", "relu2_2", "relu3_3"], distance=distance)
    hq = torch.rand(2, 3, 32, 32)
    assert float(loss.distance(hq.clone(), hq)) == 0.0
    pred = torch.rand(2, 3, 32, 32, requires_grad=True)
    value = loss.distance(pred, hq)
    value.backward()
    assert value > 0 and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())  # VGG stays frozen
    assert torch.equal(loss.train().distance(pred, hq), loss.eval().distance(pred, hq))  # mode never matters


def test_weights_follow_the_mode_on_per_layer_distances():
    # With a huge k nearly all weight sits on one layer: the total equals that layer's distance.
    layers = ["relu1_2", "relu3_3"]
    fid = DepthVGGLoss(mode="fidelity", k=1e6, layers=layers)
    real = DepthVGGLoss(mode="realism", k=1e6, layers=layers)
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        f_x = fid.vgg((x - fid.mean) / fid.std, fid.taps)
        f_y = fid.vgg((y - fid.mean) / fid.std, fid.taps)
        shallow, deep = [(a - b).abs().mean() for a, b in zip(f_x, f_y)]
        torch.testing.assert_close(fid.distance(x, y), shallow, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(real.distance(x, y), deep, rtol=1e-4, atol=1e-6)


def test_bad_settings_fail_with_one_line_naming_the_node(make_cfg):
    cfg = make_cfg("loss=ifcsr", "loss.terms.vgg_fidelity.distance=cosine")
    with pytest.raises(ConfigError, match="loss.terms.vgg_fidelity: distance must be"):
        build_component(cfg.loss.terms.vgg_fidelity, "loss.terms.vgg_fidelity")
    with pytest.raises(ValueError, match="unknown VGG16 layer 'relu9_9'"):
        DepthVGGLoss(layers=["relu9_9"])
    with pytest.raises(ValueError, match="mode must be"):
        DepthVGGLoss(mode="both")
