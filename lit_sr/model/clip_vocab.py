"""The real CLIP BPE vocabulary, read offline, and the tokenizer files derived from it.

CLIP (and OpenCLIP, hence SD-2.x's text encoder) tokenises with one published BPE table,
``bpe_simple_vocab_16e6.txt.gz``. It cannot be downloaded from a model hub here, but it ships
inside the ``open-clip-torch`` wheel. That wheel depends on torchvision, which must never be
installed next to this torch, so it is fetched without dependencies and only this file is read
from it (``scripts/setup_clip_vocab.sh`` puts it in the cache; any path to the ``.txt.gz``,
to the wheel, or an installed ``open_clip`` package works too).

From the table, :func:`clip_vocab_and_merges` derives what transformers' ``CLIPTokenizer``
reads, with OpenAI's published algorithm: the first 49152 − 256 − 2 merges; the vocabulary is
the 256 byte symbols, the same with ``</w>``, one token per merge, then ``<|startoftext|>`` and
``<|endoftext|>`` (49408 tokens).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import zipfile
from pathlib import Path

from lit_sr.errors import WeightsError

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# SHA-256 of the published file (identical in OpenAI's CLIP and in open_clip).
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
NUM_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SETUP_HINT = "run scripts/setup_clip_vocab.sh (fetches the open-clip-torch wheel without its dependencies) or pass its path"


def byte_symbols() -> list[str]:
    """The printable stand-ins of the 256 byte values, in CLIP's (and GPT-2's) vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return [chr(c) for c in chars]


def default_bpe_locations() -> list[Path]:
    """Where :func:`read_bpe` looks when no path is given: the project cache, then an installed open_clip."""
    from lit_sr.photos import cache_root

    places = [cache_root() / "clip" / BPE_NAME]
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it (its import needs torchvision)
    if spec is not None and spec.submodule_search_locations:
        places.extend(Path(p) / BPE_NAME for p in spec.submodule_search_locations)
    return places


def read_bpe(path: str | Path | None = None) -> bytes:
    """The compressed BPE table from ``path`` (the ``.txt.gz`` or an open-clip-torch wheel) or the default places."""
    if path is None:
        found = [p for p in default_bpe_locations() if p.is_file()]
        if not found:
            raise WeightsError(f"CLIP BPE vocabulary ({BPE_NAME}) not found: {SETUP_HINT}")
        path = found[0]
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"CLIP BPE vocabulary not found: {file}")
    if file.suffix == ".whl":
        with zipfile.ZipFile(file) as wheel:
            try:
                data = wheel.read(f"open_clip/{BPE_NAME}")
            except KeyError:
                raise WeightsError(f"{file}: no open_clip/{BPE_NAME} inside; is it an open-clip-torch wheel?") from None
    else:
        data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != BPE_SHA256:
        raise WeightsError(f"{file}: not the published CLIP BPE vocabulary (sha256 {digest[:16]}…, expected {BPE_SHA256[:16]}…)")
    return data


def clip_vocab_and_merges(bpe: bytes) -> tuple[dict[str, int], list[str]]:
    """(token → id, merges) of CLIP's tokenizer from the compressed BPE table."""
    lines = gzip.GzipFile(fileobj=io.BytesIO(bpe)).read().decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]  # line 0 is the table's version header
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def _added(content: str, typed: bool) -> dict:
    token = {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **token} if typed else token


def write_clip_tokenizer(out: str | Path, bpe: bytes, pad_token: str = "!",
                         name_or_path: str = "stabilityai/stable-diffusion-2-1-base") -> Path:
    """A CLIP ``tokenizer/`` folder: vocab.json, merges.txt and the published config files.

    SD-2.x's (and SD3's ``tokenizer_2/``) ``special_tokens_map.json`` names ``!`` (id 0, OpenCLIP's
    padding) as the pad token, which transformers lets win over ``tokenizer_config.json``'s
    ``<|endoftext|>``: their prompts are padded with 0. SD3's ``tokenizer/`` (OpenAI CLIP-L) pads
    with ``<|endoftext|>``.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges(bpe)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "add_prefix_space": False, "bos_token": _added(BOS, True), "do_lower_case": True, "eos_token": _added(EOS, True),
        "errors": "replace", "model_max_length": 77, "name_or_path": name_or_path,
        "pad_token": EOS, "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added(EOS, True),
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    pad = _added(EOS, False) if pad_token == EOS else pad_token
    special = {"bos_token": _added(BOS, False), "eos_token": _added(EOS, False), "pad_token": pad,
               "unk_token": _added(EOS, False)}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return folder


def write_sd2_tokenizer(out: str | Path, bpe: bytes) -> Path:
    """SD-2.x's ``tokenizer/`` folder (pads with ``!``; see :func:`write_clip_tokenizer`)."""
    return write_clip_tokenizer(out, bpe)


def byte_level_clip_tokenizer(model_max_length: int = 77, pad_token: str | None = None):
    """A real ``CLIPTokenizer`` with a byte-level vocabulary and no merges (the tiny backbones').

    Every UTF-8 byte is one token (plus its end-of-word form), so any text tokenizes offline and
    words split into several tokens, as rare words do with the real 49k-token vocabulary.
    """
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    extra = {"pad_token": pad_token} if pad_token is not None else {}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length, **extra)
