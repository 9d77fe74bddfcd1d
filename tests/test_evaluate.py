"""Evaluation CLI: the paper-style table from an exported model or from SR folders."""
from __future__ import annotations

import csv
import io

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from datamodules.imageio import load_image, save_image
from lit_sr.evaluate import main
from lit_sr.metrics import MetricSuite


def _smooth(g: torch.Generator, h: int, w: int) -> torch.Tensor:
    """A smooth random image (real images are locally correlated)."""
    return F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def _table_rows(markdown: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]  # header, data rows (after the alignment row)


@pytest.fixture
def paired(tmp_path):
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        hq = _smooth(g, 32, 32)
        save_image(hq, tmp_path / "hq" / f"im{i}.png")
        save_image(F.interpolate(hq[None], scale_factor=0.25, mode="area")[0], tmp_path / "lq" / f"im{i}.png")
    return tmp_path / "lq", tmp_path / "hq"


def test_model_table_has_one_row_per_knob_and_arrows(tmp_path, paired, make_cfg, tiny_bb, capsys):
    from lit_sr.config.build import build_generator
    from lit_sr.model.export import export_adapter

    cfg = make_cfg("noise=rgpa")
    export_adapter(build_generator(cfg, tiny_bb), tmp_path / "model", config=OmegaConf.to_container(cfg))
    lq, hq = paired
    out, out_csv = tmp_path / "table.md", tmp_path / "table.csv"
    rc = main(["--model", str(tmp_path / "model"), "--lq-dir", str(lq), "--hq-dir", str(hq), "--knobs", "50", "150", "300",
               "--metrics", "psnr", "ssim", "lpips", "--out", str(out), "--csv", str(out_csv)])
    assert rc == 0
    text = out.read_text()
    assert text == capsys.readouterr().out  # printed and written alike
    header, rows = _table_rows(text)
    assert header == ["knob", "PSNR↑", "SSIM↑"]  # LPIPS has no weights here: no column, no numbers
    assert [r[0] for r in rows] == ["50", "150", "300"]
    trend = [ln for ln in text.splitlines() if ln.startswith("Trend along t (Spearman ρ): PSNR↑ ")]
    assert len(trend) == 1 and "SSIM↑" in trend[0]
    assert all(float(v) > 0 for r in rows for v in r[1:])
    note = [ln for ln in text.splitlines() if ln.startswith("Not available")]
    assert len(note) == 1 and "LPIPS" in note[0] and "lpips_weights" in note[0]
    assert "2 images" in text and "UNCALIBRATED" not in text
    with open(out_csv, newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["knob", "PSNR↑", "SSIM↑"] and len(table) == 4
    assert abs(float(table[1][1]) - float(rows[0][1])) < 0.005  # CSV keeps full precision


def test_sr_dir_rows_match_direct_metrics(tmp_path, capsys):
    g = torch.Generator().manual_seed(1)
    hqs = []
    for i in range(2):
        hq = _smooth(g, 96, 192)  # NIQE needs two 96x96 patches
        hqs.append(hq)
        save_image(hq, tmp_path / "hq" / f"p{i}.png")
        for level, folder in ((0.02, "good"), (0.15, "bad")):
            noisy = (hq + level * torch.randn(hq.shape, generator=g)).clamp(0, 1)
            save_image(noisy, tmp_path / folder / f"p{i}.png")
    out_csv = tmp_path / "t.csv"
    rc = main(["--sr-dir", str(tmp_path / "good"), str(tmp_path / "bad"), "--hq-dir", str(tmp_path / "hq"),
               "--metrics", "psnr", "ssim", "lpips", "niqe", "--csv", str(out_csv)])
    assert rc == 0
    text = capsys.readouterr().out
    header, rows = _table_rows(text)
    assert header == ["SR folder", "PSNR↑", "SSIM↑", "NIQE↓"]
    assert [r[0] for r in rows] == [str(tmp_path / "good"), str(tmp_path / "bad")]
    assert float(rows[0][1]) > float(rows[1][1])  # less noise, higher PSNR
    assert "Not available: LPIPS" in text
    # The CSV numbers are the suite's dataset means over the saved files.
    suite = MetricSuite(["psnr", "ssim", "niqe"], scale=4)
    for i in range(2):
        suite.update(load_image(tmp_path / "good" / f"p{i}.png")[None], load_image(tmp_path / "hq" / f"p{i}.png")[None])
    direct = suite.compute()
    with open(out_csv, newline="") as fh:
        good = list(csv.reader(fh))[1]
    assert [float(v) for v in good[1:]] == pytest.approx([direct["psnr"], direct["ssim"], direct["niqe"]], rel=1e-9)


def test_sr_dir_without_hq_and_random_weights_are_labelled(tmp_path, capsys):
    g = torch.Generator().manual_seed(2)
    save_image(_smooth(g, 96, 192), tmp_path / "sr" / "a.png")
    save_image(_smooth(g, 96, 192), tmp_path / "hq" / "a.png")
    assert main(["--sr-dir", str(tmp_path / "sr"), "--metrics", "psnr", "niqe"]) == 0
    text = capsys.readouterr().out
    header, rows = _table_rows(text)
    assert header == ["SR folder", "NIQE↓"] and len(rows) == 1
    assert "PSNR needs HQ images" in text
    assert main(["--sr-dir", str(tmp_path / "sr"), "--hq-dir", str(tmp_path / "hq"), "--metrics", "psnr", "lpips",
                 "--allow-random-weights", "--rgb", "--crop-border", "0"]) == 0
    text = capsys.readouterr().out
    header, _ = _table_rows(text)
    assert header == ["SR folder", "PSNR↑", "LPIPS↓"]
    title = text.splitlines()[0]
    assert "UNCALIBRATED: LPIPS" in title and "on RGB, border crop 0" in title


def test_errors_are_one_line_with_exit_2(tmp_path, paired, make_cfg, tiny_bb, monkeypatch, capsys):
    lq, hq = paired
    cases = [
        ["--model", str(tmp_path / "nope"), "--lq-dir", str(lq), "--hq-dir", str(hq)],
        ["--sr-dir", str(tmp_path / "nope"), "--hq-dir", str(hq)],
        ["--sr-dir", str(lq), "--hq-dir", str(hq), "--metrics", "psnr", "fid"],
        ["--sr-dir", str(hq), "--hq-dir", str(hq), "--metrics", "lpips", "--vgg-weights", str(tmp_path / "no.pth"),
         "--lpips-weights", str(tmp_path / "no2.pth")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err

    from lit_sr.config.build import build_generator

    generator = build_generator(make_cfg(), tiny_bb)  # noise=uniform, no endpoints
    monkeypatch.setattr("lit_sr.config.loading.load_generator", lambda source, overrides, **choices: (generator, None))
    assert main(["--model", "m", "--lq-dir", str(lq), "--hq-dir", str(hq), "--gammas", "0.5"]) == 2
    assert "endpoints" in capsys.readouterr().err


def test_csv_quoting_of_folder_names(tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    img = _smooth(g, 32, 32)
    save_image(img, tmp_path / "a, b" / "x.png")
    save_image(img, tmp_path / "hq" / "x.png")
    out_csv = tmp_path / "t.csv"
    assert main(["--sr-dir", str(tmp_path / "a, b"), "--hq-dir", str(tmp_path / "hq"), "--metrics", "psnr",
                 "--csv", str(out_csv)]) == 0
    rows = list(csv.reader(io.StringIO(out_csv.read_text())))
    assert rows[1][0] == str(tmp_path / "a, b") and float(rows[1][1]) == 100.0  # identical images: capped PSNR


def test_per_image_csv_survives_commas_quotes_and_newlines_in_names(tmp_path):
    g = torch.Generator().manual_seed(4)
    names = ["a,b", 'say "hi"', "two\nlines", "plain"]
    for i, name in enumerate(names):
        hq = _smooth(g, 32, 32)
        save_image(hq, tmp_path / "hq" / f"{name}.png")
        save_image((hq + 0.02 * (i + 1)).clamp(0, 1), tmp_path / "sr" / f"{name}.png")
    per_image = tmp_path / "per_image.csv"
    assert main(["--sr-dir", str(tmp_path / "sr"), "--hq-dir", str(tmp_path / "hq"), "--metrics", "psnr",
                 "--per-image", str(per_image)]) == 0
    with open(per_image, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["row", "image", "metric", "value"] and all(len(r) == 4 for r in rows)
    assert sorted(r[1] for r in rows[1:]) == sorted(names)


def test_a_settings_noise_does_not_depend_on_the_settings_before_it(tmp_path, paired, make_cfg, tiny_bb):
    """Seeded per (image, setting): t=200's scores are the same whether 100 was evaluated first or not
    (rgpa draws noise at inference), and so is an image's whatever images come before it."""
    from lit_sr.config.build import build_generator
    from lit_sr.model.export import export_adapter

    cfg = make_cfg("noise=rgpa", "model.color_fix=none")
    export_adapter(build_generator(cfg, tiny_bb), tmp_path / "model", config=OmegaConf.to_container(cfg))
    lq, hq = paired

    def scores(*knobs: str, max_images: int | None = None) -> dict[tuple[str, str], str]:
        out = tmp_path / f"per_{'_'.join(knobs)}_{max_images}.csv"
        extra = ["--max-images", str(max_images)] if max_images else []
        assert main(["--model", str(tmp_path / "model"), "--lq-dir", str(lq), "--hq-dir", str(hq), "--metrics", "psnr",
                     "--knobs", *knobs, "--per-image", str(out), *extra]) == 0
        with open(out, newline="") as fh:
            return {(r["row"], r["image"]): r["value"] for r in csv.DictReader(fh) if r["metric"] == "psnr"}

    both, alone = scores("100", "400"), scores("400")
    assert {k: v for k, v in both.items() if k[0] == "400"} == alone
    first = scores("400", max_images=1)
    assert first == {k: v for k, v in alone.items() if k in first} and len(first) == 1
