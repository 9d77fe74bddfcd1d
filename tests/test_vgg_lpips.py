"""VGG16 trunk (torchvision-compatible names, L2 pooling) and LPIPS-VGG (formula, weights, loss)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data, filters

import lit_sr.model.lpips as lpips_mod
from lit_sr.errors import WeightsError
from lit_sr.model.lpips import LPIPS
from lit_sr.model.vgg import LPIPS_TAPS, VGG16_LAYERS, L2Pool2d, VGG16Features, load_vgg16_weights
from losses.lpips import LPIPSLoss

# The public VGG16 ("configuration D") as torchvision lays out ``features``: index → conv (in, out).
TV_CONVS = {
    0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
    17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
}
TV_POOLS = (4, 9, 16, 23, 30)


def torchvision_style_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Keys and shapes of ``torchvision.models.vgg16().state_dict()``, written out by hand."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for i, (cin, cout) in TV_CONVS.items():
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.01
    # The classifier has its real shapes; stride-0 views keep the saved file tiny.
    for i, (cin, cout) in {0: (25088, 4096), 3: (4096, 4096), 6: (4096, 1000)}.items():
        sd[f"classifier.{i}.weight"] = torch.zeros(1).expand(cout, cin)
        sd[f"classifier.{i}.bias"] = torch.zeros(1).expand(cout)
    return sd


def photo(size: int = 64) -> torch.Tensor:
    img = data.astronaut()[100 : 100 + size, 150 : 150 + size].astype(np.float32) / 255
    return torch.from_numpy(img).permute(2, 0, 1)[None]


# ---------------------------------------------------------------------------------- VGG16 trunk


def test_parameter_names_are_torchvision_features_names():
    model = VGG16Features()
    expected = {f"features.{i}.{p}" for i in TV_CONVS for p in ("weight", "bias")}
    assert set(model.state_dict()) == expected
    for i, (cin, cout) in TV_CONVS.items():
        assert model.state_dict()[f"features.{i}.weight"].shape == (cout, cin, 3, 3)
    assert [VGG16_LAYERS[n] for n in ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")] == list(LPIPS_TAPS)
    assert [VGG16_LAYERS[f"pool{k}"] for k in range(1, 6)] == list(TV_POOLS)


def test_torchvision_state_dict_loads_strictly(tmp_path):
    sd = torchvision_style_state_dict()
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(sd, path)
    model = load_vgg16_weights(VGG16Features(), path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key
    # The same file also loads with plain strict load_state_dict once classifier keys are dropped.
    VGG16Features().load_state_dict({k: v for k, v in sd.items() if k.startswith("features.")}, strict=True)


def test_truncated_and_l2pool_models_load_the_same_file(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(torchvision_style_state_dict(), path)
    short = load_vgg16_weights(VGG16Features(last_layer="relu2_2"), path)
    assert set(short.state_dict()) == {f"features.{i}.{p}" for i in (0, 2, 5, 7) for p in ("weight", "bias")}
    l2 = load_vgg16_weights(VGG16Features(pooling="l2"), path)  # pooling filters add no keys
    assert set(l2.state_dict()) == set(VGG16Features().state_dict())


def test_missing_feature_key_is_one_line_weights_error(tmp_path):
    sd = torchvision_style_state_dict()
    del sd["features.14.bias"]
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as err:
        load_vgg16_weights(VGG16Features(), path)
    assert str(path) in str(err.value) and "features.14.bias" in str(err.value) and "\n" not in str(err.value)


def test_wrong_shape_missing_file_and_garbage_file(tmp_path):
    sd = torchvision_style_state_dict()
    sd["features.0.weight"] = torch.zeros(64, 1, 3, 3)  # grayscale first layer
    bad = tmp_path / "gray.pth"
    torch.save(sd, bad)
    with pytest.raises(WeightsError, match="features.0.weight has shape"):
        load_vgg16_weights(VGG16Features(), bad)
    with pytest.raises(WeightsError, match="not found"):
        load_vgg16_weights(VGG16Features(), tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_vgg16_weights(VGG16Features(), junk)


def test_taps_shapes_order_and_early_stop():
    model = VGG16Features()
    calls: list[int] = []
    for i, layer in enumerate(model.features):
        layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    x = torch.rand(1, 3, 32, 32)
    feats = model(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    calls.clear()
    out = model(x, taps=["relu2_2", 3])  # names or indices, returned in the order asked
    assert [f.shape[1] for f in out] == [128, 64]
    assert max(calls) == 8  # nothing past the deepest tap ran
    with pytest.raises(ValueError, match="unknown VGG16 layer"):
        model(x, taps=["relu9_9"])
    with pytest.raises(ValueError, match="deeper"):
        VGG16Features(last_layer=8)(x, taps=[15])


def test_random_init_is_deterministic():
    a, b = VGG16Features(seed=3), VGG16Features(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(VGG16Features(seed=4).features[0].weight, a.features[0].weight)


def test_l2pool_is_dists_hanning_pool():
    pool = L2Pool2d(2)
    ref = torch.tensor([0.5, 1.0, 0.5])
    ref = torch.outer(ref, ref) / 4.0
    assert torch.allclose(pool.filter[0, 0], ref)
    x = torch.full((1, 2, 8, 8), 3.0)
    y = pool(x)
    assert y.shape == (1, 2, 4, 4)
    # Away from the zero-padded border the weighted L2 norm of a constant is that constant.
    assert torch.allclose(y[..., 1:, 1:], torch.full_like(y[..., 1:, 1:], 3.0), atol=1e-5)
    # sqrt(conv(x^2)) on a random map, computed directly.
    z = torch.rand(1, 2, 6, 6)
    direct = F.conv2d(z.square(), ref.expand(2, 1, 3, 3), stride=2, padding=1, groups=2).add(1e-12).sqrt()
    assert torch.allclose(pool(z), direct)
    assert isinstance(VGG16Features(pooling="l2").features[4], L2Pool2d)
    with pytest.raises(ValueError, match="pooling"):
        VGG16Features(pooling="avg")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- LPIPS


def reference_lpips(model: LPIPS, x01: torch.Tensor, y01: torch.Tensor) -> torch.Tensor:
    """lpips v0.1 'vgg' written out from the paper/code with plain ops, reading model's weights."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    convs = {i: model.net.features[i] for i in TV_CONVS if i < 29}
    taps = {3: 0, 8: 1, 15: 2, 22: 3, 29: 4}

    def trunk(img: torch.Tensor) -> list[torch.Tensor]:
        h = ((img * 2 - 1) - shift) / scale
        outs = []
        for i in range(30):
            if i in convs:
                h = F.conv2d(h, convs[i].weight, convs[i].bias, padding=1)
            elif i in TV_POOLS:
                h = F.max_pool2d(h, 2, 2)
            else:
                h = F.relu(h)
            if i in taps:
                outs.append(h)
        return outs

    total = torch.zeros(x01.shape[0])
    for k, (fx, fy) in enumerate(zip(trunk(x01), trunk(y01))):
        nx = fx / (torch.sqrt((fx**2).sum(1, keepdim=True)) + 1e-10)
        ny = fy / (torch.sqrt((fy**2).sum(1, keepdim=True)) + 1e-10)
        w = getattr(model, f"lin{k}").model[1].weight  # (1, C, 1, 1)
        total += ((nx - ny) ** 2 * w).sum(1).mean((1, 2))
    return total


@pytest.fixture(scope="module")
def lpips_model() -> LPIPS:
    return LPIPS(seed=0)


def test_lpips_matches_reference_formula(lpips_model):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 48, 40, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ours = lpips_model(x, y)
    assert ours.shape == (3,)
    assert torch.allclose(ours, reference_lpips(lpips_model, x, y), rtol=1e-4, atol=1e-7)


def test_lpips_zero_for_identical_and_grows_with_distortion(lpips_model):
    x = photo()
    assert float(lpips_model(x, x)[0]) == 0.0
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    noisy = torch.cat([(x + s * noise).clamp(0, 1) for s in (0.02, 0.05, 0.1, 0.2)])
    d_noise = lpips_model(noisy, x.expand_as(noisy))
    assert torch.all(d_noise[1:] > d_noise[:-1]), d_noise
    img = x[0].permute(1, 2, 0).numpy()
    blurred = torch.stack(
        [torch.from_numpy(filters.gaussian(img, sigma=s, channel_axis=2)).permute(2, 0, 1) for s in (0.5, 1, 2, 3)]
    ).float()
    d_blur = lpips_model(blurred, x.expand_as(blurred))
    assert torch.all(d_blur[1:] > d_blur[:-1]), d_blur


def test_lpips_is_frozen_the_same_in_any_mode_and_passes_gradients(lpips_model):
    assert not any(p.requires_grad for p in lpips_model.parameters())
    parent = torch.nn.Sequential(lpips_model)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    parent.train()
    in_train = lpips_model(a, b)
    parent.eval()
    assert torch.equal(in_train, lpips_model(a, b))  # no dropout or other mode-dependent layer
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    lpips_model(x, torch.rand(1, 3, 32, 32)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips_model.parameters())


def test_lpips_loads_lpips_vgg_pth_layout(tmp_path, lpips_model):
    # lpips' weights/v0.1/vgg.pth: five non-negative heads named lin{k}.model.1.weight.
    g = torch.Generator().manual_seed(5)
    channels = (64, 128, 256, 512, 512)
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(channels)}
    path = tmp_path / "vgg.pth"
    torch.save(heads, path)
    model = LPIPS(lpips_weights=str(path))
    for k in range(5):
        assert torch.equal(getattr(model, f"lin{k}").model[1].weight, heads[f"lin{k}.model.1.weight"])
    # The key names are the module's own: lpips' ``load_state_dict(strict=False)`` style works too.
    missing, unexpected = LPIPS().load_state_dict(heads, strict=False)
    assert not unexpected and all(k.startswith("net.") for k in missing)
    del heads["lin3.model.1.weight"]
    torch.save(heads, path)
    with pytest.raises(WeightsError, match="lin3.model.1.weight"):
        LPIPS(lpips_weights=str(path))
    with pytest.raises(WeightsError, match="not found"):
        LPIPS(vgg_weights=str(tmp_path / "none.pth"))


def test_uncalibrated_warning_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(lpips_mod, "_warned_uncalibrated", False)
    with caplog.at_level(logging.WARNING, logger="lit_sr.model.lpips"):
        LPIPS()
        LPIPS()
    hits = [r for r in caplog.records if "uncalibrated" in r.getMessage()]
    assert len(hits) == 1


def test_lpips_loss_is_mean_lpips(lpips_model):
    loss = LPIPSLoss(weight=0.5)
    loss.lpips = lpips_model
    g = torch.Generator().manual_seed(2)
    sr, hq = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    assert loss.weight == 0.5
    expected = lpips_model(sr, hq).mean()
    assert torch.allclose(loss.distance(sr, hq), expected)
    assert torch.allclose(loss(SimpleNamespace(sr=sr), {"hq": hq}), expected)
    assert loss.own_parameters() == []
    with pytest.raises(ValueError, match="equal shape"):
        loss.distance(sr, hq[:, :, :16])
