"""Zero-shot tagging with CLIP over a fixed tag vocabulary.

Each vocabulary entry becomes the prompt ``template.format(tag)``; an image gets the ``top_k``
tags whose text embedding is most similar to its image embedding (cosine), keeping only those at
or above ``min_similarity``. Weights load from a local ``CLIPModel`` directory (transformers
format, with its tokenizer); nothing is downloaded. Pre-processing is done here in torch
(resize short side + centre crop + CLIP normalisation), so no image processor is needed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lit_sr.errors import ConfigError, WeightsError
from lit_sr.tagging.base import Tagger, resize_normalize

VOCABULARY = Path(__file__).resolve().parents[1] / "data" / "tag_vocabulary.txt"
# OpenAI CLIP's normalisation; a local preprocessor_config.json overrides it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def read_vocabulary(path: str | Path | None = None) -> list[str]:
    """Tags, one per line (``#`` comments and blank lines ignored)."""
    path = Path(path) if path else VOCABULARY
    if not path.is_file():
        raise ConfigError(f"tagger.vocabulary: file not found: {path}")
    tags = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line and line not in tags:
            tags.append(line)
    if not tags:
        raise ConfigError(f"tagger.vocabulary: {path} lists no tags")
    return tags


class CLIPTagger(Tagger):
    """Top-k zero-shot CLIP tags (see the module docstring)."""

    def __init__(self, path: str, vocabulary: str | None = None, top_k: int = 5, min_similarity: float = 0.2,
                 template: str = "a photo of a {}.", batch_text: int = 256) -> None:
        super().__init__()
        from transformers import CLIPModel, CLIPTokenizer

        root = Path(str(path)).expanduser()
        if path in (None, "", "???") or not root.is_dir():
            raise WeightsError(f"tagger.path: CLIP model directory not found: {root} (a local transformers CLIPModel folder)")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        try:
            self.model = CLIPModel.from_pretrained(root, local_files_only=True).eval().requires_grad_(False)
            self.tokenizer = CLIPTokenizer.from_pretrained(root, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"tagger.path: cannot load CLIP from {root}: {str(exc).splitlines()[0]}") from exc
        self.vocabulary = read_vocabulary(vocabulary)
        self.top_k, self.min_similarity = int(top_k), float(min_similarity)
        self.template, self.batch_text = template, int(batch_text)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        pre = root / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            self.mean, self.std = tuple(cfg.get("image_mean", self.mean)), tuple(cfg.get("image_std", self.std))
        size = self.model.config.vision_config.image_size
        self.size = (size, size)
        self.register_buffer("text_embeds", torch.empty(0), persistent=False)

    @torch.no_grad()
    def _text_embeddings(self) -> torch.Tensor:
        if self.text_embeds.numel() == 0:
            device = next(self.model.parameters()).device
            chunks = []
            prompts = [self.template.format(t) for t in self.vocabulary]
            for i in range(0, len(prompts), self.batch_text):
                tok = self.tokenizer(prompts[i : i + self.batch_text], padding=True, truncation=True, return_tensors="pt")
                feats = self.model.get_text_features(**{k: v.to(device) for k, v in tok.items()})
                feats = getattr(feats, "pooler_output", feats)
                chunks.append(torch.nn.functional.normalize(feats.float(), dim=-1))
            self.text_embeds = torch.cat(chunks)
        return self.text_embeds

    @torch.no_grad()
    def similarities(self, images: list[torch.Tensor]) -> torch.Tensor:
        """(B, V) cosine similarity of each image with each vocabulary prompt."""
        device = next(self.model.parameters()).device
        pixels = resize_normalize([im.to(device) for im in images], self.size, self.mean, self.std, center_crop=True)
        feats = self.model.get_image_features(pixel_values=pixels.to(next(self.model.parameters()).dtype))
        feats = getattr(feats, "pooler_output", feats)
        return torch.nn.functional.normalize(feats.float(), dim=-1) @ self._text_embeddings().T

    def tag(self, images: list[torch.Tensor], paths: list[str]) -> list[list[str]]:
        sims = self.similarities(images)
        k = min(self.top_k, sims.shape[1])
        values, idx = sims.topk(k, dim=1)
        return [[self.vocabulary[int(i)] for v, i in zip(vs, ids) if float(v) >= self.min_similarity]
                for vs, ids in zip(values, idx)]
