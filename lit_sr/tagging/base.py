"""The tagger interface: a batch of images → a list of tags per image."""
from __future__ import annotations

import abc
import re

import torch
from torch import nn


def normalize_tags(tags) -> list[str]:
    """Lower-case, single-spaced, de-duplicated tags in their original order.

    Accepts a list or one string separated by commas or RAM's ``" | "``; underscores become
    spaces (WordNet-style compounds arrive as ``traffic_light``).
    """
    if isinstance(tags, str):
        tags = re.split(r"[,|]", tags)
    out: list[str] = []
    for tag in tags:
        tag = re.sub(r"\s+", " ", str(tag).replace("_", " ")).strip().lower()
        if tag and tag not in out:
            out.append(tag)
    return out


class Tagger(nn.Module, metaclass=abc.ABCMeta):
    """Produces image tags. A module so that model-backed taggers follow the job's device."""

    @abc.abstractmethod
    def tag(self, images: list[torch.Tensor], paths: list[str]) -> list[list[str]]:
        """Tags for each image; ``images`` are (3, H, W) in [0, 1], ``paths`` their files."""

    def forward(self, images: list[torch.Tensor], paths: list[str]) -> list[list[str]]:
        return [normalize_tags(t) for t in self.tag(images, paths)]


def resize_normalize(images: list[torch.Tensor], size: tuple[int, int], mean, std, center_crop: bool = False
                     ) -> torch.Tensor:
    """Batch of images resized to ``size`` (bicubic, antialiased) and normalised.

    ``center_crop``: resize the short side to fit, then crop the centre (CLIP's preprocessing);
    otherwise the image is squashed to ``size`` (RAM's and SAM-2's preprocessing).
    """
    out = []
    h, w = size
    for img in images:
        x = img[None].float()
        if center_crop:
            scale = max(h / x.shape[-2], w / x.shape[-1])
            new = (max(h, round(x.shape[-2] * scale)), max(w, round(x.shape[-1] * scale)))
            x = torch.nn.functional.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False)
            top, left = (new[0] - h) // 2, (new[1] - w) // 2
            x = x[..., top : top + h, left : left + w]
        else:
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        out.append(x.clamp(0, 1))
    x = torch.cat(out)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - mean_t) / std_t


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
