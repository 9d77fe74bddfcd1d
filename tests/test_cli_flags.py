"""Every entry point answers --help, and every lit_sr.infer flag runs through main(), alone and in its risky pairs.

Flags whose main() run another test already covers (see tests/test_infer.py, test_pipeline.py, test_mem.py):
``--model --input --output --tile-overlap --auto-tile --no-auto-tile --max-output-pixels --adapter-weights``
(with ``--fuse``), ``--progress`` and ``--batch-size`` on a deterministic model, ``--gamma`` (one value),
``--knob adaptive`` with ``--set``. The table below runs the rest and the edge values.
"""
from __future__ import annotations

import copy
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lit_sr import infer

# ------------------------------------------------------------------------------ --help of every entry point

ENTRY_POINTS = {  # module → the usage line's program name
    "train": "python train.py",
    "lit_sr.infer": "lit-sr-infer",
    "lit_sr.evaluate": "lit-sr-evaluate",
    "lit_sr.heldout": "lit-sr-heldout",
    "lit_sr.blend": "python -m lit_sr.blend",
    "lit_sr.studio.__main__": "lit-sr-studio",
    "lit_sr.extract_masks": "python -m lit_sr.extract_masks",
    "lit_sr.make_backbone": "python -m lit_sr.make_backbone",
    "lit_sr.make_tiny_vae": "python -m lit_sr.make_tiny_vae",
    "lit_sr.pack": "python -m lit_sr.pack",
}


@pytest.mark.parametrize("module,prog", sorted(ENTRY_POINTS.items()))
def test_every_entry_point_prints_its_help_and_exits_0(module, prog, capsys, tmp_path, monkeypatch):
    """``--help`` prints the usage of that program, exits 0 and does nothing else (no file is written)."""
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module).main
    try:
        code = main(["--help"])
    except SystemExit as exc:  # argparse's --help
        code = exc.code
    out = capsys.readouterr().out
    assert code == 0 and out.startswith(f"usage: {prog}"), (code, out[:200])
    assert not list(tmp_path.iterdir())
    if module == "lit_sr.pack":  # a config-only command: its settings are listed with their defaults
        assert all(f"  {key}: " in out for key in ("input_dirs", "output_dir", "workers", "part_size", "verify"))


# ------------------------------------------------------------------------------ lit_sr.infer: models and photos

H, W, SCALE = 16, 20, 4


def _export(backbone, path: Path, *overrides: str) -> Path:
    """A tiny model whose trained tensors are all non-trivial (zero-initialised layers perturbed, as training does)."""
    from conftest import UNIT_BASELINE

    from lit_sr.config.build import build_generator
    from lit_sr.config.compose import compose
    from lit_sr.model.export import export_adapter

    cfg = compose([*UNIT_BASELINE, *overrides])
    g = build_generator(cfg, copy.deepcopy(backbone))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in g.model_state_dict().values():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return export_adapter(g, path, OmegaConf.to_container(cfg))


class Setup:
    """Two exported models (RGPA: a knob and drawn noise; IFCSR: endpoints), photos and the no-flag outputs."""

    def __init__(self, root: Path, backbone) -> None:
        self.root = root
        self.rgpa = _export(backbone, root / "rgpa", "noise=rgpa")
        self.ifcsr = _export(backbone, root / "ifcsr", "experiment=ifcsr")
        self.folder = root / "photos"
        self.folder.mkdir()
        rng = np.random.default_rng(0)
        for name in ("a", "b"):  # equal sizes: --batch-size groups them
            Image.fromarray((rng.random((H, W, 3)) * 255).astype(np.uint8)).save(self.folder / f"{name}.png")
        self.photo = self.folder / "a.png"
        self.runs = 0
        code, _, self.base = self.infer(self.rgpa, [])
        assert code == 0 and self.base[""].shape == (H * SCALE, W * SCALE, 3)
        code, _, self.ends = self.infer(self.ifcsr, ["--gamma", "0", "1"])
        assert code == 0 and set(self.ends) == {"_g0", "_g1"}
        assert np.abs(self.ends["_g0"].astype(int) - self.ends["_g1"]).max() > 2  # two different endpoints

    def infer(self, model: Path, flags: list[str], source: Path | None = None, out: Path | None = None,
              capsys=None) -> tuple[int, str, dict[str, np.ndarray]]:
        """Exit status, the last stderr line, and the outputs of ``a.png`` by suffix ("", "_g0", "_region", …)."""
        self.runs += 1
        out = out or self.root / f"out{self.runs}"
        code = infer.main(["--model", str(model), "--input", str(source or self.photo), "--output", str(out), *flags])
        err = capsys.readouterr().err.strip().splitlines() if capsys is not None else []
        outputs = {p.stem[1:]: np.asarray(Image.open(p)) for p in out.glob("a*.png")} if out.exists() else {}
        return code, err[-1] if err else "", outputs


@pytest.fixture(scope="module")
def setup(tmp_path_factory, _tiny_backbone_template) -> Setup:
    return Setup(tmp_path_factory.mktemp("cli"), _tiny_backbone_template)


def _diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255**2 / max(mse, 1e-10))


# ------------------------------------------------------------------------------ lit_sr.infer: one flag at a time

# (flags, check of the outputs against the no-flag run ``base`` of the RGPA model); each row must exit 0.
EQUAL = "equal"  # the same bits as the run without the flag (the flag's value is the default)
ALONE = [
    (["--knob", "50"], EQUAL),  # the strategy's default t
    (["--knob", "200"], "differs"),
    (["--seed", "0"], EQUAL),
    (["--seed", "1"], "differs"),  # RGPA draws noise: another seed, another image
    (["--scale", "4"], EQUAL),  # the model's own scale
    (["--scale", "2"], "x2"),
    (["--set", "noise.timestep=200"], "knob200"),  # the config's default knob, overridden
    (["--tile", "20"], EQUAL),  # = the latent width: one tile
    (["--tile", "19"], "close"),  # one latent pixel less: two tiles, blended
    (["--tile", "1"], "size"),  # the smallest tile
    (["--vae-tile", "80"], EQUAL),  # = the output width: no tiling
    (["--vae-tile", "76"], "close"),
    (["--vae-tile", "4"], "size"),  # the smallest: one VAE factor
    (["--color-fix", "none"], EQUAL),
    (["--color-fix", "adain"], "colour"),
    (["--color-fix", "wavelet"], "colour"),
    (["--precision", "fp32"], EQUAL),
    (["--precision", "bf16"], "close"),
    (["--precision", "fp16"], "close"),
    (["--device", "cpu"], EQUAL),
    (["--fuse"], "within1"),  # merged LoRA: float rounding only
    (["--channels-last"], "within1"),
    (["--progress", "auto"], EQUAL),
    (["--adapter-weights", "main=1"], EQUAL),
    (["--batch-size", "1"], EQUAL),
]


@pytest.mark.parametrize("flags,check", ALONE, ids=[" ".join(f) for f, _ in ALONE])
def test_each_infer_flag_alone(setup, flags, check):
    """Each flag on its own: the run succeeds and the image changes exactly as the flag says."""
    code, _, outs = setup.infer(setup.rgpa, flags)
    assert code == 0 and set(outs) == {""}
    out, base = outs[""], setup.base[""]
    if check == EQUAL:
        assert np.array_equal(out, base)
        return
    if check == "x2":
        assert out.shape == (H * 2, W * 2, 3)
        return
    assert out.shape == base.shape
    if check == "differs":
        assert _diff(out, base) > 2
    elif check == "knob200":
        assert np.array_equal(out, setup.infer(setup.rgpa, ["--knob", "200"])[2][""]) and _diff(out, base) > 2
    elif check == "close":
        assert _psnr(out, base) > 30 and not np.array_equal(out, base)
    elif check == "within1":
        assert _diff(out, base) <= 1
    elif check == "colour":  # the colour (per-channel mean) moves to the LQ's
        lq = np.asarray(Image.open(setup.photo), np.float64).mean((0, 1))
        assert np.abs(out.mean((0, 1)) - lq).max() < np.abs(base.mean((0, 1)) - lq).max()
    else:
        assert check == "size"


@pytest.mark.slow
def test_compile_flag_runs_the_same_model(setup):
    """--compile BACKEND (eager: no C compiler needed) gives the uncompiled images."""
    code, _, outs = setup.infer(setup.rgpa, ["--compile", "eager"])
    assert code == 0 and _diff(outs[""], setup.base[""]) <= 1


# ------------------------------------------------------------------------------ lit_sr.infer: risky pairs and refusals


def test_overwrite_replaces_only_when_asked(setup, capsys):
    """Without --overwrite an existing output stops the run before loading; with it, the new image replaces it."""
    out = setup.root / "overwrite"
    assert setup.infer(setup.rgpa, [], out=out)[0] == 0
    code, err, outs = setup.infer(setup.rgpa, ["--knob", "200"], out=out, capsys=capsys)
    assert code == 2 and err.startswith(f"error: {out / 'a.png'} exists") and np.array_equal(outs[""], setup.base[""])
    code, _, outs = setup.infer(setup.rgpa, ["--knob", "200", "--overwrite"], out=out)
    assert code == 0 and np.array_equal(outs[""], setup.infer(setup.rgpa, ["--knob", "200"])[2][""])


def test_batch_size_two_with_a_seeded_strategy_is_reproducible(setup):
    """--batch-size 2 on a folder with RGPA (noise drawn once per batch): both images written, same bits twice."""
    first = setup.root / "batch1"
    second = setup.root / "batch2"
    for out in (first, second):
        assert infer.main(["--model", str(setup.rgpa), "--input", str(setup.folder), "--output", str(out),
                           "--batch-size", "2", "--seed", "3"]) == 0
    for name in ("a.png", "b.png"):
        a, b = np.asarray(Image.open(first / name)), np.asarray(Image.open(second / name))
        assert a.shape == (H * SCALE, W * SCALE, 3) and np.array_equal(a, b)


def test_tiles_of_both_kinds_together(setup):
    """--tile and --vae-tile at their smallest useful values together, with --tile-overlap 0."""
    code, _, outs = setup.infer(setup.rgpa, ["--tile", "2", "--tile-overlap", "0", "--vae-tile", "8"])
    assert code == 0 and outs[""].shape == setup.base[""].shape


def test_fused_low_precision_stays_close(setup):
    """--fuse with --precision bf16: merging the LoRA in reduced precision keeps the image."""
    code, _, outs = setup.infer(setup.rgpa, ["--fuse", "--precision", "bf16"])
    assert code == 0 and _psnr(outs[""], setup.base[""]) > 30


def test_several_gammas_blend_the_two_endpoints(setup):
    """--gamma 0 0.5 1: one file per γ, γ = 0.5 halfway between the endpoints (8-bit rounding aside)."""
    code, _, outs = setup.infer(setup.ifcsr, ["--gamma", "0", "0.5", "1"])
    assert code == 0 and set(outs) == {"_g0", "_g0.5", "_g1"}
    assert np.array_equal(outs["_g0"], setup.ends["_g0"]) and np.array_equal(outs["_g1"], setup.ends["_g1"])
    halfway = (setup.ends["_g0"].astype(np.float64) + setup.ends["_g1"]) / 2
    assert np.abs(outs["_g0.5"] - halfway).max() <= 1


def _gamma_map(path: Path, h: int = H * SCALE, w: int = W * SCALE) -> Path:
    """γ = 0 on the left half, 1 on the right half."""
    arr = np.zeros((h, w), np.uint8)
    arr[:, w // 2:] = 255
    Image.fromarray(arr, "L").save(path)
    return path


def test_gamma_map_takes_each_region_from_its_endpoint(setup):
    """--gamma-map: where the map is 0 the fidelity endpoint's pixels, where it is 255 the realism one's, exactly."""
    gmap = _gamma_map(setup.root / "map.png")
    code, _, outs = setup.infer(setup.ifcsr, ["--gamma-map", str(gmap)])
    assert code == 0 and set(outs) == {"_region"}
    half = W * SCALE // 2
    assert np.array_equal(outs["_region"][:, :half], setup.ends["_g0"][:, :half])
    assert np.array_equal(outs["_region"][:, half:], setup.ends["_g1"][:, half:])
    # With --batch-size 2 on the folder, each image gets the map (a batch of two rounds a level differently).
    out = setup.root / "map_batch"
    assert infer.main(["--model", str(setup.ifcsr), "--input", str(setup.folder), "--output", str(out),
                       "--gamma-map", str(gmap), "--batch-size", "2"]) == 0
    assert _diff(np.asarray(Image.open(out / "a_region.png")), outs["_region"]) <= 1
    assert np.asarray(Image.open(out / "b_region.png")).shape == outs["_region"].shape


@pytest.mark.parametrize("case,message", [
    ("cuda", "error: device 'cuda'"),
    ("nonsense", "error: unknown device 'nonsense'"),
    ("gamma-map-and-gamma", "error: --gamma and --gamma-map exclude each other"),
    ("gamma-map-plain-model", "error: --gamma-map needs a model with fidelity/realism endpoints"),
    ("gamma-map-wrong-size", "error: the gamma map is 40x32, the output is 80x64"),
    ("fuse-endpoints", "error: --fuse needs one fixed set of adapters"),
])
def test_flag_combinations_that_cannot_work_are_one_line(setup, capsys, case, message):
    """Refusals end with one ``error:`` line and exit status 2 (no traceback), and write nothing."""
    cuda = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"  # one GPU more than there is
    gmap = _gamma_map(setup.root / f"{case}.png", *((H * 2, W * 2) if case == "gamma-map-wrong-size" else ()))
    model, flags = {
        "cuda": (setup.rgpa, ["--device", cuda]),
        "nonsense": (setup.rgpa, ["--device", "nonsense"]),
        "gamma-map-and-gamma": (setup.ifcsr, ["--gamma-map", str(gmap), "--gamma", "0.5"]),
        "gamma-map-plain-model": (setup.rgpa, ["--gamma-map", str(gmap)]),
        "gamma-map-wrong-size": (setup.ifcsr, ["--gamma-map", str(gmap)]),
        "fuse-endpoints": (setup.ifcsr, ["--fuse"]),
    }[case]
    code, err, outs = setup.infer(model, flags, capsys=capsys)
    assert code == 2 and err.startswith(message) and not outs, (code, err)


@pytest.mark.parametrize("module", ["lit_sr.evaluate", "lit_sr.studio.__main__"])
def test_the_other_model_tools_refuse_an_unusable_device_in_one_line(setup, capsys, module, tmp_path):
    """lit-sr-evaluate and lit-sr-studio take --device too: the same one-line refusal, exit status 2."""
    main = importlib.import_module(module).main
    where = ["--lq-dir", str(setup.folder)] if module == "lit_sr.evaluate" else ["--input", str(setup.photo),
                                                                               "--out", str(tmp_path / "page")]
    cuda = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    for device, message in ((cuda, "error: device 'cuda"), ("nonsense", "error: unknown device 'nonsense'")):
        assert main(["--model", str(setup.rgpa), *where, "--device", device]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(message) and "Traceback" not in "\n".join(err), err[-1]
