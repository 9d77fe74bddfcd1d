"""MaskExtractor: the predict-only system of TMG mask extraction (tags → nouns → grounded masks)."""
from __future__ import annotations

import lightning as L
import torch


class MaskExtractor(L.LightningModule):
    """tagger → noun filter → grounded segmentation, one batch of images at a time."""

    def __init__(self, tagger: torch.nn.Module, noun_filter, grounding: torch.nn.Module, max_nouns: int = 16) -> None:
        super().__init__()
        self.tagger, self.noun_filter, self.grounding = tagger, noun_filter, grounding
        self.max_nouns = int(max_nouns)

    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        ok = [it for it in batch if "error" not in it]
        results = [{"path": it["path"], "key": it["key"], "error": it["error"]} for it in batch if "error" in it]
        if not ok:
            return results
        images = [it["image"].to(self.device) for it in ok]
        tags = self.tagger(images, [it["path"] for it in ok])
        nouns = [self.noun_filter(t)[: self.max_nouns] for t in tags]
        found = self.grounding(images, nouns, [it["mask_size"] for it in ok])
        for it, t, nm in zip(ok, tags, found):
            results.append({"path": it["path"], "key": it["key"], "sha1": it["sha1"], "prompt": ", ".join(t),
                            "tags": t, "nouns": nm.nouns, "masks": nm.masks.cpu().numpy(), "image_size": it["image_size"],
                            "bytes": it["bytes"], "mtime_ns": it["mtime_ns"]})
        return results
