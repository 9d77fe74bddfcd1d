"""Random-weight model folders: the real CLIP tokenizer, published schedulers, BERT layout, CLI errors.

The large folders themselves are built and run in tests/test_real_size.py (slow); these checks
need only the CLIP BPE table (scripts/setup_clip_vocab.sh).
"""
from __future__ import annotations

import json
import zipfile

import pytest

from lit_sr.errors import WeightsError
from lit_sr.make_backbone import main
from lit_sr.model.clip_vocab import BPE_NAME, read_bpe, write_sd2_tokenizer
from lit_sr.model.random_backbone import ARCHITECTURES


@pytest.fixture(scope="module")
def bpe() -> bytes:
    return read_bpe()


def test_clip_tokenizer_gives_the_published_ids(bpe, tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(write_sd2_tokenizer(tmp_path / "tokenizer", bpe), local_files_only=True)
    assert len(tok) == 49408 and (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok(["a diagram", "a dog"]).input_ids == [[49406, 320, 22697, 49407], [49406, 320, 1929, 49407]]
    assert tok.tokenize("Astronaut riding") == ["astronaut</w>", "riding</w>"]  # lower-cased, word-final marks
    # SD-2's special_tokens_map.json pads with "!" (id 0, as OpenCLIP does), overriding tokenizer_config.json.
    padded = tok("a cat", padding="max_length", max_length=77).input_ids
    assert tok.pad_token == "!" and padded[:4] == [49406, 320, 2368, 49407] and set(padded[4:]) == {0}
    vocab = json.loads((tmp_path / "tokenizer" / "vocab.json").read_text())
    assert (vocab["!"], vocab["!</w>"], vocab["<|endoftext|>"]) == (0, 256, 49407)
    assert len((tmp_path / "tokenizer" / "merges.txt").read_text().splitlines()) == 1 + 48894


def test_bpe_table_is_read_from_a_wheel_and_checked(bpe, tmp_path):
    wheel = tmp_path / "open_clip_torch-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"open_clip/{BPE_NAME}", bpe)
    assert read_bpe(wheel) == bpe
    fake = tmp_path / BPE_NAME
    fake.write_bytes(bpe[:-10])
    with pytest.raises(WeightsError, match="not the published CLIP BPE vocabulary"):
        read_bpe(fake)
    with pytest.raises(WeightsError, match="not found"):
        read_bpe(tmp_path / "missing.txt.gz")


def test_published_schedulers_share_sd21s_noise_schedule(tmp_path):
    """SD-2.1-base ships PNDM, SD-Turbo Euler with trailing spacing (one step lands on t = 999)."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

    from lit_sr.model.parameterisation import (
        SD_SCHEDULER,
        EpsilonPrediction,
        from_scheduler_config,
        read_parameterisation,
    )

    classes = {"sd21-base": PNDMScheduler, "sd-turbo": EulerDiscreteScheduler, "sd21-768v": DDIMScheduler}
    for arch, spec in ARCHITECTURES.items():
        folder = tmp_path / arch / "scheduler"
        folder.mkdir(parents=True)
        (folder / "scheduler_config.json").write_text(json.dumps(spec["scheduler"]))
        sched = classes[arch].from_pretrained(folder.parent, subfolder="scheduler")
        kind = "v_prediction" if arch == "sd21-768v" else "epsilon"  # the 768 model predicts v
        assert type(sched) is classes[arch] and sched.config.prediction_type == kind
        param = read_parameterisation(str(folder.parent))
        assert param.kind == kind and (kind != "epsilon" or isinstance(param, EpsilonPrediction))
        assert param.alphas_cumprod.equal(from_scheduler_config(SD_SCHEDULER).alphas_cumprod)
    sched.set_timesteps(1)
    assert sched.timesteps.tolist() == [999]


def test_bert_vocabulary_has_berts_layout(bpe, tmp_path):
    from transformers import BertTokenizer

    from lit_sr.tagging.random_grounding import BERT_VOCAB_SIZE, bert_vocab

    vocab = bert_vocab(bpe)
    assert len(vocab) == len(set(vocab)) == BERT_VOCAB_SIZE
    ids = {t: i for i, t in enumerate(vocab)}
    assert [ids[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "!", ".", "?", "a")] == \
        [0, 100, 101, 102, 103, 999, 1012, 1029, 1037]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=True)
    assert tok.tokenize("A Traffic light.") == ["a", "traffic", "light", "."]
    assert tok.tokenize("astronauts") == ["astronaut", "##s"]  # WordPiece continuation pieces


@pytest.mark.parametrize("args, message", [
    (["--arch", "sam2-hiera-tiny", "--text-layers", "2"], "--text-layers applies to sd21-base / sd21-768v / sd-turbo / sd3-medium / sd35-medium only"),
    (["--arch", "sd21-base", "--layers", "2"], "--layers applies to sd3-medium / sd35-medium only"),
    (["--arch", "grounding-dino-tiny", "--with-image-encoder"], "--with-image-encoder applies to"),
    (["--arch", "sd21-base", "--vision-layers", "2"], "--vision-layers needs --with-image-encoder"),
    (["--arch", "sd21-base", "--text-layers", "24"], "text_layers must be in [1, 23]"),
])
def test_cli_refuses_bad_arguments_with_one_line(args, message, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []  # nothing half-built is left behind


def test_cli_refuses_an_existing_folder(tmp_path, capsys):
    assert main(["--arch", "sam2-hiera-tiny", "--out", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err
