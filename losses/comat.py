"""CoMat positive-area loss on the denoiser's text attention (CODSR's TMG).

For every noun of an image with a non-empty mask ``M`` and every CLIP token ``t`` of that noun
in the image's prompt, with ``A_{h,t}`` head ``h``'s cross-attention probabilities of token ``t``
at one layer and ``M`` resized to that layer's resolution, as CoMat's reference computes it:

    r_{h,t} = Σ_u A_{h,t}(u)·M(u) / Σ_u A_{h,t}(u)          (the share inside the mask, per head)
    token loss = mean over nouns of mean over the noun's tokens of mean over heads of (1 − r_{h,t})²

averaged over the captured layers: the ratio is taken per head, and each noun counts once however
many tokens it has. Attention entirely inside the mask costs 0, entirely outside costs 1.

``head_reduction: mean_attention`` averages the heads' attention before the ratio (a head attending
weakly then counts less) and ``token_weighting: per_token`` averages over all entity tokens (a
3-token noun weighs three times a 1-token one) — the variant this project first shipped, kept for
comparison; the reference's choices are the defaults. An optional pixel term (``pixel_weight`` > 0) adds, per noun, the binary
cross-entropy between the summed attention of its tokens and its mask.

The loss reads ``prompt`` (through the conditioner, so it is the prompt the denoiser saw), ``nouns``,
``masks`` and ``mask_valid`` from the batch (:mod:`datamodules.tmg_dataset`) and the attention
of the generator's denoiser pass from the capture processors it installs in :meth:`attach`: a
UNet's ``attn2`` cross-attention, or the image-query → text-key block of an MM-DiT's joint
attention (its softmax runs over image and text keys together; the ratio above is taken over
those text columns). The token positions are the CLIP tokenizer's, which index the first tokens
of both families' text states (SD3's T5 tokens follow the 77 CLIP positions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_sr.errors import ConfigError
from lit_sr.model import attention_capture
from lit_sr.model.facts import RunFacts
from lit_sr.model.output import SROutput
from losses.base import LossTerm


def token_indices(tokenizer, prompt: str, noun: str, max_length: int | None = None) -> list[int]:
    """Positions of ``noun``'s tokens in the tokenised ``prompt`` (all occurrences).

    Positions index the padded ``input_ids`` the text encoder sees (position 0 is the start
    token). A noun the tokenizer splits into several tokens maps to all of them; occurrences cut
    off by truncation are dropped. With CLIP's word-final ``</w>`` tokens a match must start a
    word, so ``dog`` does not match the end of ``hotdog``.
    """
    ids = tokenizer(prompt, truncation=True, max_length=max_length or tokenizer.model_max_length).input_ids
    sub = tokenizer(noun, add_special_tokens=False).input_ids
    if not sub:
        return []
    tokens = tokenizer.convert_ids_to_tokens(ids)
    word_final = any(str(t).endswith("</w>") for t in tokens)
    special = set(getattr(tokenizer, "all_special_ids", []))
    out: list[int] = []
    n = len(sub)
    for start in range(len(ids) - n + 1):
        if ids[start : start + n] != sub:
            continue
        prev = start - 1
        if word_final and prev >= 0 and ids[prev] not in special and not str(tokens[prev]).endswith("</w>"):
            continue  # inside another word
        out.extend(range(start, start + n))
    return list(dict.fromkeys(out))


HEAD_REDUCTIONS = ("ratio_per_head", "mean_attention")
TOKEN_WEIGHTINGS = ("per_word", "per_token")


def positive_area_loss(heads: torch.Tensor, size: tuple[int, int], masks: torch.Tensor, b_idx: torch.Tensor,
                       n_idx: torch.Tensor, t_idx: torch.Tensor, eps: float = 1e-8,
                       head_reduction: str = "ratio_per_head") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-entity CoMat losses of one layer and the layer-resolution masks.

    ``heads`` (B, H, h*w, L) per-head attention; ``masks`` (B, N, H, W); entity ``e`` is token
    ``t_idx[e]`` of noun ``n_idx[e]`` in image ``b_idx[e]``. Returns ((E,) losses, masks (B, N, h*w)):
    the mean over heads of (1 − r_h)² (``ratio_per_head``), or (1 − r)² of the head-averaged
    attention (``mean_attention``).
    """
    h, w = size
    # Area resize, then any overlap counts: a small object must not vanish at coarse layers.
    m = F.interpolate(masks.float(), size=(h, w), mode="area").flatten(2).gt(0).to(heads.dtype)
    mask = m[b_idx, n_idx]  # (E, h*w)
    if head_reduction == "ratio_per_head":
        a = heads[b_idx, :, :, t_idx]  # (E, H, h*w)
        inside = (a * mask[:, None]).sum(-1) / (a.sum(-1) + eps)
        return ((1 - inside) ** 2).mean(-1), m
    a = heads.mean(dim=1)[b_idx, :, t_idx]  # (E, h*w)
    inside = (a * mask).sum(-1) / (a.sum(-1) + eps)
    return (1 - inside) ** 2, m


def weighted_mean(losses: torch.Tensor, word: torch.Tensor, weighting: str) -> torch.Tensor:
    """Mean of per-entity ``losses``: over words (each word's tokens averaged first) or over tokens."""
    if weighting == "per_token":
        return losses.mean()
    n = int(word.max()) + 1
    sums = losses.new_zeros(n).index_add(0, word, losses)
    counts = losses.new_zeros(n).index_add(0, word, torch.ones_like(losses))
    return (sums / counts).mean()


class CoMatLoss(LossTerm):
    """η_pos · CoMat positive-area token loss (+ optional pixel BCE) on captured text attention.

    ``layers``: regexes selecting the denoiser's capture points by name (None: all; a UNet's
    ``…attn2``, an MM-DiT's ``transformer_blocks.N.attn``); ``downsample``: keep layers at these
    factors below the latent (None: all; SD-2.1 at 512 px: [2, 4] = 32², 16²; every MM-DiT layer
    sits at its patch size, 2).
    """

    def __init__(self, weight: float = 1.0, pixel_weight: float = 0.0, layers: list[str] | None = None,
                 downsample: list[int] | None = None, eps: float = 1e-8, head_reduction: str = "ratio_per_head",
                 token_weighting: str = "per_word") -> None:
        super().__init__(weight)
        if pixel_weight < 0:
            raise ValueError(f"pixel_weight must be >= 0, got {pixel_weight}")
        if head_reduction not in HEAD_REDUCTIONS:
            raise ValueError(f"head_reduction must be one of {', '.join(HEAD_REDUCTIONS)}, got {head_reduction!r}")
        if token_weighting not in TOKEN_WEIGHTINGS:
            raise ValueError(f"token_weighting must be one of {', '.join(TOKEN_WEIGHTINGS)}, got {token_weighting!r}")
        self.head_reduction, self.token_weighting = head_reduction, token_weighting
        self.pixel_weight = float(pixel_weight)
        self.layers = list(layers) if layers else None
        self.downsample = list(downsample) if downsample else None
        self.eps = float(eps)
        # Plain attributes (not submodules): the generator is the system's, not this term's state.
        self.__dict__["_denoiser"] = None
        self.__dict__["_conditioner"] = None
        self.__dict__["_tokenizer"] = None
        self.__dict__["_store"] = None
        self.last: dict = {}  # the latest components, for logging (tensors: no device sync here)
        self._index_cache: dict[tuple[str, str], list[int]] = {}

    @classmethod
    def requires(cls, node, facts: RunFacts) -> str | None:
        if not facts.conditioning_uses_text:
            return "loss.terms.comat (TMG) needs per-image text prompts: set conditioning=text"
        if not facts.mask_cache:
            return ("loss.terms.comat (TMG) needs noun masks: set data.mask_cache=<folder> "
                    "(build it with python -m lit_sr.extract_masks)")
        if facts.tile_latent is not None:
            return ("loss.terms.comat (TMG) reads the text attention of one whole denoiser pass, and model.tile_latent="
                    f"{facts.tile_latent} splits it into tiles: set model.tile_latent=null for training")
        return None

    # ------------------------------------------------------------------ wiring
    def attach(self, generator, backbone=None) -> None:
        """Install text-attention capture on ``generator.denoiser`` and take the prompt tokenizer."""
        conditioner = generator.conditioner
        tokenizer = conditioner.tokenizer or (backbone.tokenizer if backbone is not None else None)
        if tokenizer is None:
            raise ConfigError("loss.terms.comat (TMG) needs the text conditioner's tokenizer: set conditioning=text")
        self.detach()
        self.__dict__["_store"] = attention_capture.install(generator.denoiser, self.layers, self.downsample)
        self.__dict__["_denoiser"] = generator.denoiser
        self.__dict__["_conditioner"] = conditioner
        self.__dict__["_tokenizer"] = tokenizer

    def detach(self) -> None:
        """Remove the capture processors (the denoiser gets its original processors back)."""
        if self._denoiser is not None:
            attention_capture.remove(self._denoiser)
        self.__dict__["_denoiser"] = self.__dict__["_store"] = None

    # ------------------------------------------------------------------ loss
    def _prompts(self, batch: dict, n: int) -> list[str]:
        prompts = self._conditioner.prompts_for(batch, n)
        if prompts is not None:
            return prompts
        prompts = batch.get("prompt")
        if prompts is None:
            raise ValueError("CoMat: the batch has no 'prompt' (enable the mask cache: data.mask_cache)")
        return [prompts] * n if isinstance(prompts, str) else list(prompts)

    def entity_tokens(self, prompts: list[str], nouns: list[list[str]], valid: torch.Tensor) -> list[tuple[int, int, int]]:
        """(image, noun slot, token position) for every valid noun token found in its prompt."""
        max_len = int(getattr(self._tokenizer, "model_max_length", 77))
        out = []
        for b, (prompt, words) in enumerate(zip(prompts, nouns)):
            for j, noun in enumerate(words[: valid.shape[1]]):
                if not bool(valid[b, j]) or not noun:
                    continue
                key = (prompt, noun)
                if key not in self._index_cache:
                    if len(self._index_cache) > 50_000:
                        self._index_cache.clear()
                    self._index_cache[key] = token_indices(self._tokenizer, prompt, noun, max_len)
                out += [(b, j, t) for t in self._index_cache[key]]
        return out

    def forward(self, out: SROutput, batch: dict) -> torch.Tensor:
        if self._store is None:
            raise RuntimeError("CoMatLoss used before attach(generator)")
        for key in ("masks", "mask_valid", "nouns"):
            if key not in batch:
                raise ValueError(f"CoMat: the batch has no {key!r} (set data.mask_cache so the data carries noun masks)")
        record = self._store.take(out.z_in)
        if record is None or not record.layers:
            raise RuntimeError("CoMat: no text attention was captured for this generator pass (the denoiser ran "
                               "without gradients, tiled (model.tile_latent), or no layer fits loss.terms.comat.downsample)")
        masks, valid = batch["masks"], batch["mask_valid"].bool()
        if "hq" in batch and masks.shape[-2:] != batch["hq"].shape[-2:]:
            raise ValueError(f"CoMat: masks {tuple(masks.shape[-2:])} do not match the HQ crop "
                             f"{tuple(batch['hq'].shape[-2:])}; the degradation must keep the crop geometry")
        prompts = self._prompts(batch, masks.shape[0])
        entities = self.entity_tokens(prompts, batch["nouns"], valid)
        layers = list(record.layers.values())
        anchor = sum(l.heads.sum() for l in layers) * 0.0  # keeps the graph when no noun is usable
        if not entities:
            self.last = {"token": anchor.detach(), "pixel": anchor.detach(), "entities": 0}
            return anchor
        device = layers[0].heads.device
        b_idx = torch.tensor([e[0] for e in entities], device=device)
        n_idx = torch.tensor([e[1] for e in entities], device=device)
        t_idx = torch.tensor([e[2] for e in entities], device=device)
        words = {(e[0], e[1]): None for e in entities}  # (image, noun slot) → word index, in order
        word_of = {key: i for i, key in enumerate(words)}
        word = torch.tensor([word_of[(e[0], e[1])] for e in entities], device=device)
        masks = masks.to(device)
        token_losses, pixel_losses = [], []
        for layer in layers:
            per_entity, m = positive_area_loss(layer.heads, layer.size, masks, b_idx, n_idx, t_idx, self.eps,
                                               self.head_reduction)
            token_losses.append(weighted_mean(per_entity, word, self.token_weighting))
            if self.pixel_weight > 0:
                pixel_losses.append(self._pixel_loss(layer.probs, m, entities))
        token = torch.stack(token_losses).mean()
        pixel = torch.stack(pixel_losses).mean() if pixel_losses else token.new_zeros(())
        self.last = {"token": token.detach(), "pixel": pixel.detach(), "entities": len(entities)}
        return token + self.pixel_weight * pixel + anchor

    def _pixel_loss(self, probs: torch.Tensor, m: torch.Tensor, entities: list[tuple[int, int, int]]) -> torch.Tensor:
        """Mean over nouns of BCE(Σ_t∈noun A_t, M) at one layer."""
        groups: dict[tuple[int, int], list[int]] = {}
        for b, j, t in entities:
            groups.setdefault((b, j), []).append(t)
        losses = []
        for (b, j), toks in groups.items():
            attn = probs[b, :, toks].sum(-1).clamp(1e-6, 1 - 1e-6)
            losses.append(F.binary_cross_entropy(attn, m[b, j]))
        return torch.stack(losses).mean()
