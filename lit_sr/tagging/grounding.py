"""Per-noun masks: Grounding DINO boxes → SAM-2 masks (the two halves of Grounded-SAM-2).

Both models are transformers' native implementations loaded from local folders
(``GroundingDinoForObjectDetection`` + its BERT tokenizer, ``Sam2Model``). Image pre- and
post-processing is done here in torch, because the transformers image processors of both
models import torchvision (which cannot be installed next to this torch):

* Grounding DINO: resize (short side ``gd_short_side``, long side ≤ ``gd_max_side``), ImageNet
  normalisation, zero padding to the batch's largest image with a ``pixel_mask``. The text is
  ``"noun1 . noun2 . "`` tokenised noun by noun, so each noun's token span is known exactly.
  A query box is kept when its best token probability exceeds ``box_threshold``; it belongs to
  the noun whose tokens score highest, if that score exceeds ``text_threshold``; ``max_boxes``
  keeps only the best-scoring ones of an image. Predicted boxes are normalised (cx, cy, w, h) of
  the unpadded image → pixel (x0, y0, x1, y1).
* SAM-2: the image is squashed to the model's square input (1024 for the released models) with
  ImageNet normalisation; boxes are scaled per axis and decoded ``sam_batch`` at a time (the
  decoder's memory grows with the boxes of a call: a few hundred at once need tens of GB);
  low-resolution mask logits are resized bilinearly straight to the cache resolution and
  thresholded at 0. The masks of all boxes of a noun are united; a noun whose mask covers less
  than ``min_area`` of the image is dropped.

:func:`tiny_grounded_sam2` builds both models random-initialised from small configs (offline),
for tests and CPU smoke runs; its boxes and masks are meaningless but shaped like real ones.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lit_sr.errors import WeightsError
from lit_sr.model.backbone import parse_dtype
from lit_sr.tagging.base import IMAGENET_MEAN, IMAGENET_STD, resize_normalize


@dataclass
class NounMasks:
    """The masks found in one image: ``nouns[i]`` ↔ ``masks[i]`` (bool, (h, w)), largest first."""

    nouns: list[str] = field(default_factory=list)
    masks: torch.Tensor | None = None  # (N, h, w) bool
    scores: list[float] = field(default_factory=list)
    boxes: int = 0  # boxes Grounding DINO kept (before the area filter)


def _load(cls, path: str, what: str, dtype: torch.dtype):
    root = Path(str(path)).expanduser()
    if path in (None, "", "???") or not root.is_dir():
        raise WeightsError(f"grounding.{what}: model directory not found: {root}")
    try:
        return cls.from_pretrained(root, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"grounding.{what}: cannot load from {root}: {str(exc).splitlines()[0]}") from exc


def boxes_to_xyxy(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalised (cx, cy, w, h) boxes → pixel (x0, y0, x1, y1), clipped to the image."""
    cx, cy, bw, bh = boxes.unbind(-1)
    x0 = ((cx - bw / 2) * width).clamp(0, width)
    y0 = ((cy - bh / 2) * height).clamp(0, height)
    x1 = ((cx + bw / 2) * width).clamp(0, width)
    y1 = ((cy + bh / 2) * height).clamp(0, height)
    return torch.stack([x0, y0, x1, y1], -1)


class GroundedSAM2(nn.Module):
    """Boxes per noun from Grounding DINO, masks per box from SAM-2 (see the module docstring)."""

    def __init__(
        self,
        grounding_dino: str | nn.Module,
        sam2: str | nn.Module,
        tokenizer=None,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        min_area: float = 0.001,
        gd_short_side: int = 800,
        gd_max_side: int = 1333,
        max_boxes: int | None = None,
        sam_batch: int = 32,
        dtype: str = "fp32",
    ) -> None:
        super().__init__()
        from transformers import AutoTokenizer, GroundingDinoForObjectDetection, Sam2Model

        torch_dtype = parse_dtype(dtype)
        if isinstance(grounding_dino, nn.Module):
            self.detector = grounding_dino
        else:
            self.detector = _load(GroundingDinoForObjectDetection, grounding_dino, "grounding_dino", torch_dtype)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(Path(grounding_dino).expanduser(), local_files_only=True)
        if tokenizer is None:
            raise ValueError("a Grounding DINO model object needs its tokenizer")
        self.tokenizer = tokenizer
        self.segmenter = sam2 if isinstance(sam2, nn.Module) else _load(Sam2Model, sam2, "sam2", torch_dtype)
        self.detector.eval().requires_grad_(False)
        self.segmenter.eval().requires_grad_(False)
        for name, v in (("box_threshold", box_threshold), ("text_threshold", text_threshold), ("min_area", min_area)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        self.box_threshold, self.text_threshold, self.min_area = float(box_threshold), float(text_threshold), float(min_area)
        self.gd_short_side, self.gd_max_side = int(gd_short_side), int(gd_max_side)
        for name, v in (("max_boxes", max_boxes), ("sam_batch", sam_batch)):
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.max_boxes = None if max_boxes is None else int(max_boxes)
        self.sam_batch = int(sam_batch)
        self.max_text_len = int(self.detector.config.max_text_len)
        size = self.segmenter.config.prompt_encoder_config.image_size
        self.sam_size = (size, size) if isinstance(size, int) else tuple(size)
        ids = self.tokenizer.convert_tokens_to_ids([self.tokenizer.cls_token, self.tokenizer.sep_token, "."])
        self.cls_id, self.sep_id, self.dot_id = ids

    # ------------------------------------------------------------------ Grounding DINO
    def _gd_pixels(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = []
        for img in images:
            h, w = img.shape[-2:]
            scale = min(self.gd_short_side / min(h, w), self.gd_max_side / max(h, w))
            sizes.append((max(1, round(h * scale)), max(1, round(w * scale))))
        hmax, wmax = max(s[0] for s in sizes), max(s[1] for s in sizes)
        ref = next(self.detector.parameters())
        pixels = torch.zeros(len(images), 3, hmax, wmax, device=ref.device, dtype=ref.dtype)
        mask = torch.zeros(len(images), hmax, wmax, device=ref.device, dtype=torch.long)
        for i, (img, (h, w)) in enumerate(zip(images, sizes)):
            pixels[i, :, :h, :w] = resize_normalize([img.to(ref.device)], (h, w), IMAGENET_MEAN, IMAGENET_STD)[0]
            mask[i, :h, :w] = 1
        return pixels, mask

    def noun_chunks(self, nouns: list[str]) -> list[list[tuple[str, list[int]]]]:
        """Nouns with their token ids, grouped so each group's text fits ``max_text_len``."""
        chunks: list[list[tuple[str, list[int]]]] = [[]]
        used = 2  # [CLS] ... [SEP]
        for noun in nouns:
            ids = self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(noun))
            need = len(ids) + 1  # + "."
            if not ids or need + 2 > self.max_text_len:
                continue  # untokenisable or longer than the model's whole text window
            if used + need > self.max_text_len:
                chunks.append([])
                used = 2
            chunks[-1].append((noun, ids))
            used += need
        return [c for c in chunks if c]

    def _text(self, chunk: list[tuple[str, list[int]]]) -> tuple[list[int], list[tuple[int, int]]]:
        ids, spans = [self.cls_id], []
        for _, toks in chunk:
            spans.append((len(ids), len(ids) + len(toks)))
            ids += toks + [self.dot_id]
        return ids + [self.sep_id], spans

    @torch.no_grad()
    def detect(self, images: list[torch.Tensor], nouns: list[list[str]]) -> list[list[tuple[str, torch.Tensor, float]]]:
        """Per image: (noun, xyxy pixel box, score) for every kept box."""
        results: list[list[tuple[str, torch.Tensor, float]]] = [[] for _ in images]
        chunked = [self.noun_chunks(n) for n in nouns]
        rounds = max((len(c) for c in chunked), default=0)
        for r in range(rounds):  # one detector pass per text chunk, batched over the images that have one
            idx = [i for i, c in enumerate(chunked) if len(c) > r]
            texts = [self._text(chunked[i][r]) for i in idx]
            length = max(len(t[0]) for t in texts)
            ref = next(self.detector.parameters())
            input_ids = torch.zeros(len(idx), length, dtype=torch.long, device=ref.device)
            attn = torch.zeros_like(input_ids)
            for row, (ids, _) in enumerate(texts):
                input_ids[row, : len(ids)] = torch.tensor(ids, device=ref.device)
                attn[row, : len(ids)] = 1
            pixels, pmask = self._gd_pixels([images[i] for i in idx])
            out = self.detector(pixel_values=pixels, pixel_mask=pmask, input_ids=input_ids, attention_mask=attn,
                                token_type_ids=torch.zeros_like(input_ids))
            probs = out.logits.float().sigmoid()  # (b, Q, max_text_len); padding positions are -inf → 0
            boxes = out.pred_boxes.float()
            for row, i in enumerate(idx):
                h, w = images[i].shape[-2:]
                spans = texts[row][1]
                per_noun = torch.stack([probs[row, :, a:b].max(-1).values for a, b in spans], -1)  # (Q, n)
                best_token = probs[row].max(-1).values
                noun_score, noun_idx = per_noun.max(-1)
                keep = (best_token > self.box_threshold) & (noun_score > self.text_threshold)
                xyxy = boxes_to_xyxy(boxes[row], h, w)
                for q in keep.nonzero().flatten().tolist():
                    noun = chunked[i][r][int(noun_idx[q])][0]
                    results[i].append((noun, xyxy[q].cpu(), float(best_token[q])))
        if self.max_boxes is not None:
            results = [sorted(r, key=lambda d: -d[2])[: self.max_boxes] for r in results]
        return results

    # ------------------------------------------------------------------ SAM-2
    @torch.no_grad()
    def segment(self, images: list[torch.Tensor], nouns: list[list[str]], mask_sizes: list[tuple[int, int]]
                ) -> list[NounMasks]:
        """Masks per noun at ``mask_sizes[i]`` for each image (nouns without a box are absent)."""
        detections = self.detect(images, nouns)
        out = [NounMasks(masks=torch.zeros(0, *size, dtype=torch.bool)) for size in mask_sizes]
        todo = [i for i, d in enumerate(detections) if d]
        if not todo:
            return out
        ref = next(self.segmenter.parameters())
        pixels = resize_normalize([images[i].to(ref.device) for i in todo], self.sam_size, IMAGENET_MEAN, IMAGENET_STD)
        embeddings = self.segmenter.get_image_embeddings(pixels.to(ref.dtype))  # vision encoder once per batch
        for row, i in enumerate(todo):
            h, w = images[i].shape[-2:]
            dets = detections[i]
            sy, sx = self.sam_size[0] / h, self.sam_size[1] / w
            boxes = torch.stack([d[1] for d in dets]).to(ref.device) * torch.tensor([sx, sy, sx, sy], device=ref.device)
            image = [e[row : row + 1] for e in embeddings]
            masks = torch.cat([self._box_masks(image, boxes[a : a + self.sam_batch], mask_sizes[i])
                               for a in range(0, len(boxes), self.sam_batch)])
            merged: dict[str, list] = {}
            for (noun, _, score), m in zip(dets, masks):
                if noun in merged:
                    merged[noun][0] |= m
                    merged[noun][1] = max(merged[noun][1], score)
                else:
                    merged[noun] = [m.clone(), score]
            total = mask_sizes[i][0] * mask_sizes[i][1]
            kept = [(n, m, s) for n, (m, s) in merged.items() if m.sum().item() / total >= max(self.min_area, 1e-12)]
            kept.sort(key=lambda t: -int(t[1].sum()))
            out[i] = NounMasks(
                nouns=[k[0] for k in kept],
                masks=torch.stack([k[1] for k in kept]).cpu() if kept else torch.zeros(0, *mask_sizes[i], dtype=torch.bool),
                scores=[k[2] for k in kept],
                boxes=len(dets),
            )
        return out

    def _box_masks(self, image: list[torch.Tensor], boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(n_boxes, *size) bool masks of one image's boxes (SAM-2 input pixels) in one decoder call."""
        res = self.segmenter(image_embeddings=image, input_boxes=boxes[None].to(image[0].dtype), multimask_output=False)
        logits = res.pred_masks[0, :, 0].float()  # (n_boxes, m, m)
        return F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] > 0

    def forward(self, images: list[torch.Tensor], nouns: list[list[str]], mask_sizes: list[tuple[int, int]]
                ) -> list[NounMasks]:
        return self.segment(images, nouns, mask_sizes)


# ---------------------------------------------------------------------------------------------
# Tiny offline models
# ---------------------------------------------------------------------------------------------

def tiny_bert_vocab() -> list[str]:
    """A WordPiece vocabulary laid out like BERT's where Grounding DINO depends on it.

    Grounding DINO hard-codes BERT ids: [CLS]=101, [SEP]=102, "."=1012, "?"=1029. Words split
    into single characters (``r ##o ##c ##k ##e ##t``), so every noun is several tokens, as rare
    words are with the real vocabulary.
    """
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    pieces += ["##" + p for p in pieces] + list("-',!&/()") + ["##-", "##'"]
    for p in pieces:
        vocab.append(p)
    fixed = {1012: ".", 1029: "?"}
    while len(vocab) < 1030:
        vocab.append(fixed.get(len(vocab), f"[unused{len(vocab)}]"))
    return vocab


def tiny_bert_tokenizer():
    """``BertTokenizer`` over :func:`tiny_bert_vocab` (written to a temporary vocab file)."""
    from transformers import BertTokenizer

    fd, name = tempfile.mkstemp(suffix="-vocab.txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(tiny_bert_vocab()) + "\n")
        return BertTokenizer(name, do_lower_case=True)  # positional: `vocab_file` (4.x) or `vocab` (5.x)
    finally:
        os.unlink(name)


def tiny_grounding_dino(vocab_size: int = 1030, max_text_len: int = 64):
    """A small random ``GroundingDinoForObjectDetection`` (Swin + BERT), ~0.2 M parameters."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    swin = SwinConfig(window_size=7, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], image_size=224,
                      out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4])
    text = dict(model_type="bert", vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=16, max_position_embeddings=max_text_len)
    # decoder_layers >= 2: the box head ties layer 0 to the others and fails with a single layer.
    cfg = GroundingDinoConfig(d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
                              decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=16,
                              num_feature_levels=4, encoder_n_points=2, decoder_n_points=2, backbone_config=swin,
                              max_text_len=max_text_len, text_config=text)
    return GroundingDinoForObjectDetection(cfg)


def tiny_sam2(image_size: int = 128):
    """A small random ``Sam2Model`` (Hiera + FPN + mask decoder), ~0.2 M parameters."""
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    s = image_size // 4
    # Global attention must not sit on a stage's first (pooling) block: stages [1, 1, 2, 1], block 3.
    hiera = Sam2HieraDetConfig(hidden_size=12, image_size=[image_size, image_size], blocks_per_stage=[1, 1, 2, 1],
                               embed_dim_per_stage=[12, 24, 48, 96], num_attention_heads_per_stage=[1, 1, 1, 1],
                               window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[3])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[96, 48, 24, 12],
                              backbone_feature_sizes=[[s, s], [s // 2, s // 2], [s // 4, s // 4]], fpn_hidden_size=32)
    cfg = Sam2Config(vision_config=vision,
                     prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, image_size=image_size, patch_size=16,
                                                                   mask_input_channels=8),
                     mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2,
                                                               num_attention_heads=4, iou_head_hidden_dim=32))
    return Sam2Model(cfg)


def tiny_grounded_sam2(seed: int = 0, box_threshold: float = 0.0, text_threshold: float = 0.0, min_area: float = 0.0,
                       gd_short_side: int = 96, gd_max_side: int = 160, sam_size: int = 128) -> GroundedSAM2:
    """Random tiny Grounding DINO + SAM-2 built offline (tests, CPU smoke runs)."""
    torch.manual_seed(seed)
    tokenizer = tiny_bert_tokenizer()
    return GroundedSAM2(tiny_grounding_dino(vocab_size=len(tokenizer)), tiny_sam2(sam_size), tokenizer=tokenizer,
                        box_threshold=box_threshold, text_threshold=text_threshold, min_area=min_area,
                        gd_short_side=gd_short_side, gd_max_side=gd_max_side)
