"""Shared fixtures: a cache folder reused across runs and a tiny backbone built once per session."""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LIT_SR_CACHE", str(ROOT / ".cache" / "lit_sr"))
sys.path.insert(0, str(ROOT))  # train.py lives at the top level
# Tiny tensors: extra intra-op threads mostly spin-wait (measured 10-50x slower steps on a busy
# 2-core machine); training subprocesses set their own thread count.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def _tiny_backbone_template():
    from lit_sr.model.backbone import tiny_backbone

    return tiny_backbone(vision_encoder=True)


@pytest.fixture
def tiny_bb(_tiny_backbone_template):
    """A fresh copy of the tiny backbone (generators add adapters to it, so never share one)."""
    return copy.deepcopy(_tiny_backbone_template)


@pytest.fixture
def make_cfg():
    """Compose the project config with overrides (fast: nothing is built)."""
    from lit_sr.config.compose import compose

    def _make(*overrides: str):
        return compose(list(overrides))

    return _make
