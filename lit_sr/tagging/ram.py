"""Recognize Anything (RAM / RAM++) tags, as OSEDiff and CODSR use them.

The ``recognize-anything`` package is git-only (not on PyPI) and its BERT code breaks with
transformers >= 4.57, so it is imported lazily and only when this tagger is built; run the
extraction job in an environment that has it (``pip install
git+https://github.com/xinyu1205/recognize-anything`` with ``transformers<4.57``), or use
``tagger=clip`` / ``tagger=file``. Pre-processing is done here in torch (384×384, ImageNet
normalisation), so torchvision is not needed by lit_sr itself.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lit_sr.errors import ConfigError, WeightsError
from lit_sr.tagging.base import IMAGENET_MEAN, IMAGENET_STD, Tagger, resize_normalize

INSTALL_HINT = ("pip install git+https://github.com/xinyu1205/recognize-anything in an environment with "
                "transformers<4.57 (it is git-only and breaks with transformers>=4.57), or use tagger=clip / tagger=file")


class RAMTagger(Tagger):
    """RAM (``variant=ram``) or RAM++ (``variant=ram_plus``) from a local ``.pth`` checkpoint."""

    def __init__(self, weights: str, variant: str = "ram_plus", vit: str = "swin_l", image_size: int = 384) -> None:
        super().__init__()
        if variant not in ("ram", "ram_plus"):
            raise ConfigError(f"tagger.variant must be 'ram' or 'ram_plus', got {variant!r}")
        path = Path(str(weights)).expanduser()
        if weights in (None, "", "???") or not path.is_file():
            raise WeightsError(f"tagger.weights: RAM checkpoint not found: {path} (e.g. ram_plus_swin_large_14m.pth)")
        try:
            from ram import models as ram_models
        except Exception as exc:  # ImportError, or its own import failing against a new transformers
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"tagger=ram needs the recognize-anything package ({reason}): {INSTALL_HINT}") from None
        try:
            self.model = getattr(ram_models, variant)(pretrained=str(path), image_size=image_size, vit=vit)
        except Exception as exc:  # its loader raises arbitrary errors for incompatible files/versions
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WeightsError(f"tagger.weights: cannot load {variant} from {path} ({reason})") from None
        self.model.eval().requires_grad_(False)
        self.size = (int(image_size), int(image_size))

    @torch.no_grad()
    def tag(self, images: list[torch.Tensor], paths: list[str]) -> list[list[str]]:
        param = next(self.model.parameters())
        x = resize_normalize([im.to(param.device) for im in images], self.size, IMAGENET_MEAN, IMAGENET_STD)
        english = self.model.generate_tag(x.to(param.dtype))[0]  # (english, chinese); " | "-separated strings
        return [t.split(" | ") if t else [] for t in english]
