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
    from lit_sr.model.families.sd import tiny_sd

    return tiny_sd(vision_encoder=True)


@pytest.fixture
def tiny_bb(_tiny_backbone_template):
    """A fresh copy of the tiny backbone (generators add adapters to it, so never share one)."""
    return copy.deepcopy(_tiny_backbone_template)


@pytest.fixture(scope="session")
def _tiny_sd3_template():
    from lit_sr.model.families.sd3 import tiny_sd3

    return tiny_sd3(vision_encoder=True)


@pytest.fixture
def tiny_sd3_bb(_tiny_sd3_template):
    """A fresh copy of the tiny SD3-shaped (MM-DiT, flow-matching) backbone."""
    return copy.deepcopy(_tiny_sd3_template)


# Component tests compose from the plain one-step configuration (OSEDiff's uniform noise, raw
# decode, no curve callbacks) unless they choose otherwise; the embedded CPU default itself
# (rgpa, colour alignment, curve and knob samples) is trained by tests/test_default_run.py and
# tests/test_train.py through train.py.
UNIT_BASELINE = ("backbone=tiny", "noise=uniform", "callbacks=default", "model.color_fix=none", "optim.lr=1e-3")


@pytest.fixture
def make_cfg():
    """Compose the project config with overrides (fast: nothing is built)."""
    from lit_sr.config.compose import compose

    def _make(*overrides: str):
        given = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
        pinned = [o for o in UNIT_BASELINE if o.split("=", 1)[0] not in given]
        return compose([*pinned, *overrides])

    return _make
