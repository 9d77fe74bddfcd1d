"""Per-image text prompts through the frozen CLIP text encoder.

Each image's prompt comes from, in order:

1. ``batch["prompt"][i]`` when the batch carries prompts (e.g. tags from a tag cache);
2. the prompt file (``prompt_file``: CSV or JSON mapping an image's file stem to its prompt),
   looked up by the stem of ``batch["path"][i]`` (or ``batch["name"][i]``);
3. the fixed ``prompt``.

Prompts are encoded by the backbone's prompt encoder as its family was trained (SD-2: CLIP states
padded to 77 tokens; SD3: CLIP-L + CLIP-G (+ T5) states and the pooled vector). The encoder is
kept (prompts change per batch) but is never trained, never saved as trained state and stays in
eval mode. A negative prompt is encoded once for classifier-free guidance users (e.g. VSD's real
score).
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import torch

from lit_sr.errors import ConfigError
from lit_sr.model.condition import Condition, ConditionBuffer, PromptEncoder
from lit_sr.model.conditioning.base import Conditioner
from lit_sr.model.facts import RunFacts

log = logging.getLogger(__name__)

_KEY_HEADERS = {"name", "stem", "image", "file", "filename", "path"}


def load_prompt_file(path: str | Path) -> dict[str, str]:
    """Image stem → prompt from a JSON object or a two-column CSV (an optional header row is skipped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"conditioning.prompt_file: file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"conditioning.prompt_file: {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ConfigError(f"conditioning.prompt_file: {path} must hold one JSON object mapping image stems to prompt strings")
        items = data.items()
    elif path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        if rows and rows[0][0].strip().lower() in _KEY_HEADERS:
            rows = rows[1:]
        bad = next((i for i, r in enumerate(rows) if len(r) < 2), None)
        if bad is not None:
            raise ConfigError(f"conditioning.prompt_file: {path} row {bad + 1} needs two columns (image stem, prompt)")
        items = ((r[0], ",".join(r[1:])) for r in rows)  # unquoted commas in a prompt stay part of it
    else:
        raise ConfigError(f"conditioning.prompt_file: {path} must be a .csv or .json file")
    return {Path(k.strip()).stem: v.strip() for k, v in items}


class TextConditioner(Conditioner):
    """CLIP text embeddings of per-image prompts (batch → prompt file → fixed prompt)."""

    uses_text = True

    def __init__(
        self,
        prompt: str = "",
        prompt_file: str | None = None,
        negative_prompt: str = "",
        use_batch_prompts: bool = True,
        cache_size: int = 1024,
    ) -> None:
        super().__init__()
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.use_batch_prompts = bool(use_batch_prompts)
        self.prompt_map = load_prompt_file(prompt_file) if prompt_file else {}
        self.cache_size = int(cache_size)
        self._cache: dict[str, Condition] = {}
        self._warned_missing = False
        self._encoder: PromptEncoder | None = None
        self.tokenizer = None
        self.embedding = ConditionBuffer()
        self.negative = ConditionBuffer()

    @classmethod
    def requires(cls, node, facts: RunFacts) -> str | None:
        if not facts.text_encoder:
            return "conditioning=text needs the backbone's text encoder (set backbone.text_encoder=true)"
        return None

    def attach(self, backbone) -> None:
        if backbone.prompts is None:
            raise ConfigError("conditioning=text needs the backbone's text encoder (backbone.text_encoder=true)")
        self._encoder = backbone.prompts
        self.tokenizer = backbone.prompts.tokenizer
        self.embedding.set(self._encoder.encode([self.prompt]))
        self.negative.set(self._encoder.encode([self.negative_prompt]))

    # ------------------------------------------------------------------ prompts
    def prompts_for(self, batch: dict | None, batch_size: int) -> list[str]:
        """The prompt of every image in the batch (see module docstring for the order)."""
        batch = batch or {}
        given = batch.get("prompt") if self.use_batch_prompts else None
        if given is not None:
            given = [given] * batch_size if isinstance(given, str) else list(given)
            if len(given) != batch_size:
                raise ValueError(f"batch['prompt'] has {len(given)} prompts for {batch_size} images")
            return [str(p) for p in given]
        keys = batch.get("path", batch.get("name"))
        if not self.prompt_map or keys is None:
            return [self.prompt] * batch_size
        keys = [keys] * batch_size if isinstance(keys, str) else list(keys)
        prompts = []
        for key in keys:
            stem = Path(str(key)).stem
            if stem not in self.prompt_map and not self._warned_missing:
                log.warning("conditioning.prompt_file has no prompt for %r; using the fixed prompt (warned once)", stem)
                self._warned_missing = True
            prompts.append(self.prompt_map.get(stem, self.prompt))
        return prompts

    def encode(self, prompts: list[str], ref: torch.Tensor) -> Condition:
        """The condition of every prompt on ``ref``'s device (cached per prompt)."""
        if self._encoder is None:
            raise RuntimeError("TextConditioner used before attach(backbone)")
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            if len(self._cache) + len(missing) > self.cache_size:
                self._cache.clear()
            self._cache.update(zip(missing, self._encoder.encode(missing, ref).rows()))
        return Condition.stack([self._cache[p] for p in prompts]).to(device=ref.device)

    def forward(self, lq_up: torch.Tensor, batch: dict | None = None) -> Condition:
        prompts = self.prompts_for(batch, lq_up.shape[0])
        if all(p == self.prompt for p in prompts):
            return self.embedding.get().to(lq_up.dtype).expand(lq_up.shape[0])
        return self.encode(prompts, lq_up).to(lq_up.dtype)

    def prompt_embedding(self, prompt: str) -> Condition | None:
        if prompt == self.negative_prompt:
            return self.negative.get()
        if prompt == self.prompt:
            return self.embedding.get()
        return self.encode([prompt], self.embedding.tokens)

    def negative_embedding(self, batch_size: int = 1, ref: torch.Tensor | None = None) -> Condition:
        """The condition of ``negative_prompt`` for ``batch_size`` images (classifier-free guidance)."""
        neg = self.negative.get() if ref is None else self.negative.get().to(ref.dtype, ref.device)
        return neg.expand(batch_size)
