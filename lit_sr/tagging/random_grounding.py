"""Local folders of Grounding DINO-T and SAM-2 (Hiera-T) with the published configs and random weights.

They let the mask-extraction job (``grounding=gsam2 grounding.grounding_dino=DIR grounding.sam2=DIR``)
run at the real models' shapes where their weights cannot be downloaded. The configurations are
those of ``IDEA-Research/grounding-dino-tiny`` (Swin-T backbone: depths 2-2-6-2, heads 3-6-12-24,
BERT-base text tower, d_model 256, 6+6 layers, 900 queries, 256 text tokens) and of
``facebook/sam2.1-hiera-tiny`` (Hiera-T: stages 1-2-7-2, widths 96-768, global blocks 5-7-9),
which are transformers' defaults for ``GroundingDinoConfig`` / ``Sam2Config``; they are spelt out
here so a change of those defaults cannot change the models silently.

BERT's own vocabulary cannot be had offline, so :func:`bert_vocab` generates one of the same
size (30522) and layout where Grounding DINO relies on it ([PAD]=0, [UNK]=100, [CLS]=101,
[SEP]=102, [MASK]=103, the unused slots, ASCII punctuation/digits/letters from 999 on, so
"." = 1012), filled with frequent English words and ``##`` pieces taken from the CLIP BPE table
in merge (frequency) order.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lit_sr.model.clip_vocab import clip_vocab_and_merges

BERT_VOCAB_SIZE = 30522
GROUNDING_DINO_TINY = {
    "backbone_config": {"model_type": "swin", "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24],
                        "window_size": 7, "image_size": 224, "out_features": ["stage2", "stage3", "stage4"],
                        "out_indices": [2, 3, 4]},
    "text_config": {"model_type": "bert", "vocab_size": BERT_VOCAB_SIZE, "hidden_size": 768, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512},
    "d_model": 256, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
    "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, "num_queries": 900,
    "num_feature_levels": 4, "encoder_n_points": 4, "decoder_n_points": 4, "max_text_len": 256, "two_stage": True,
}
SAM2_HIERA_TINY = {
    "vision_config": {
        "backbone_config": {"model_type": "sam2_hiera_det_model", "hidden_size": 96, "num_attention_heads": 1, "blocks_per_stage": [1, 2, 7, 2],
                            "embed_dim_per_stage": [96, 192, 384, 768], "num_attention_heads_per_stage": [1, 2, 4, 8],
                            "window_size_per_stage": [8, 4, 14, 7], "global_attention_blocks": [5, 7, 9],
                            "window_positional_embedding_background_size": [7, 7], "image_size": [1024, 1024]},
        "backbone_channel_list": [768, 384, 192, 96], "backbone_feature_sizes": [[256, 256], [128, 128], [64, 64]],
        "fpn_hidden_size": 256,
    },
    "prompt_encoder_config": {"hidden_size": 256, "image_size": 1024, "patch_size": 16, "mask_input_channels": 16},
    "mask_decoder_config": {"hidden_size": 256, "mlp_dim": 2048, "num_hidden_layers": 2, "num_attention_heads": 8,
                            "iou_head_hidden_dim": 256},
}


def bert_vocab(bpe: bytes) -> list[str]:
    """A 30522-token WordPiece vocabulary with bert-base-uncased's special-token and punctuation ids."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 994)]
    singles = [chr(c) for c in range(0x21, 0x7F) if not chr(c).isupper()]  # ASCII '!'..'~' in BERT's order
    vocab += singles + ["##" + c for c in singles]
    seen = set(vocab)
    clip_vocab, _ = clip_vocab_and_merges(bpe)
    for token in clip_vocab:  # merge order: frequent words first
        stem = token[:-4] if token.endswith("</w>") else ""
        if len(stem) < 2 or not (stem.isascii() and stem.isalpha() and stem.islower()):
            continue
        for piece in (stem, "##" + stem):
            if len(vocab) < BERT_VOCAB_SIZE and piece not in seen:
                vocab.append(piece)
                seen.add(piece)
        if len(vocab) >= BERT_VOCAB_SIZE:
            break
    return vocab


def write_grounding_dino_tiny(out: str | Path, bpe: bytes, seed: int = 0) -> Path:
    """A ``GroundingDinoForObjectDetection`` folder (config, random weights, BERT tokenizer files)."""
    from transformers import BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(bert_vocab(bpe)) + "\n", encoding="utf-8")
    BertTokenizer(str(root / "vocab.txt"), do_lower_case=True, model_max_length=512).save_pretrained(root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        GroundingDinoForObjectDetection(GroundingDinoConfig(**GROUNDING_DINO_TINY)).save_pretrained(root)
    return root


def write_sam2_hiera_tiny(out: str | Path, seed: int = 0) -> Path:
    """A ``Sam2Model`` folder (config and random weights)."""
    from transformers import Sam2Config, Sam2Model

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        Sam2Model(Sam2Config(**SAM2_HIERA_TINY)).save_pretrained(root)
    return root
