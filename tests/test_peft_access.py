"""Pins the peft internals lit_sr sets (lit_sr/model/peft_access.py): if a peft release changes them,
this fails instead of silently training or running the wrong adapters."""
from __future__ import annotations

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from lit_sr.model.peft_access import set_active


def _model():
    from peft import inject_adapter_in_model

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    for name in ("a", "b"):
        m = inject_adapter_in_model(LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights="gaussian"), m, name)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # non-identity adapters
    return m


def _layers(m) -> list[BaseTunerLayer]:
    return [x for x in m.modules() if isinstance(x, BaseTunerLayer)]


def test_set_active_gives_peft_outputs_and_leaves_requires_grad_alone():
    x = torch.randn(4, 6)
    ours, theirs = _model(), _model()
    flags = {n: p.requires_grad for n, p in ours.named_parameters()}
    for names in (["a"], ["b"], ["a", "b"], []):
        for layer in _layers(ours):
            set_active(layer, names)
        for layer in _layers(theirs):  # peft's own switches (which also rewrite requires_grad)
            if names:
                layer.enable_adapters(True)
                layer.set_adapter(names)
            else:
                layer.enable_adapters(False)
        torch.testing.assert_close(ours(x), theirs(x))
        assert {n: p.requires_grad for n, p in ours.named_parameters()} == flags
    base = nn.Sequential(*[layer.base_layer if isinstance(layer, BaseTunerLayer) else layer for layer in ours])
    torch.testing.assert_close(ours(x), base(x))  # [] : the base layers alone
    assert all(layer.active_adapters == ["a", "b"] and layer.disable_adapters for layer in _layers(ours))
