"""``train.py --help`` and ``python -m lit_sr.extract_masks --help``: the usage line, every config
group with its choices (default marked) and a one-line summary of each choice, read from the YAML
files' leading comments."""
from __future__ import annotations

from pathlib import Path

import yaml

from lit_sr.config.compose import CONF_DIR

USAGE = """usage: python train.py [--help] [--cfg] [group=choice ...] [key=value ...]

  group=choice     pick a file of a config group (below), e.g. noise=rgpa experiment=codsr
  key=value        set any value, e.g. trainer.max_steps=20 data.batch_size=2 ckpt_path=last
  +key=value       add a key the config does not have; ~key removes one
  --cfg            print the composed config (with the overrides given) and exit
  --help           print this text and exit
"""

EXTRACT_USAGE = """usage: python -m lit_sr.extract_masks [--help] [--cfg] [group=choice ...] [key=value ...]

Builds the TMG mask cache offline (tags -> nouns -> boxes -> masks); see docs/tmg.md.

  group=choice     pick a file of a config group (below), e.g. tagger=file grounding=tiny
  key=value        set any value, e.g. image_dirs=[/data/DIV2K_train_HR] cache_dir=/data/tmg tagger.path=tags.csv
  --cfg            print the composed config (with the overrides given) and exit
  --help           print this text and exit
"""


def summary(path: Path, width: int = 88) -> str:
    """The first comment line of a config file that says what it is (not ``@package``)."""
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text.startswith("#"):
            break
        text = text.lstrip("#").strip()
        if text and not text.startswith("@package"):
            return text if len(text) <= width else text[: width - 1] + "…"
    return ""


def defaults(conf_dir: Path, config_name: str) -> dict[str, str | None]:
    """The root config's default choice per group (``None``: the group is off by default)."""
    data = yaml.safe_load((conf_dir / f"{config_name}.yaml").read_text()) or {}
    out: dict[str, str | None] = {}
    for entry in data.get("defaults", []):
        if isinstance(entry, dict):
            for group, choice in entry.items():
                out[str(group)] = None if choice is None else str(choice)
    return out


def usage_text(conf_dir: str | Path | None = None, config_name: str = "train") -> str:
    """The help of ``train.py`` (``config_name="train"``) or of the mask extraction (``"extract"``).

    A defaults entry ``extract/tagger@tagger`` is the group ``tagger`` with its files in
    ``conf/extract/tagger``; training also lists the groups its defaults leave out.
    """
    root = Path(conf_dir or CONF_DIR)
    chosen = {}
    for entry, choice in defaults(root, config_name).items():
        folder, _, package = entry.partition("@")
        chosen[package or folder] = (folder, choice)
    if config_name == "train":
        chosen.update({p.name: (p.name, None) for p in root.iterdir() if p.is_dir() and p.name not in chosen
                       and p.name != "extract"})
    lines = [USAGE if config_name == "train" else EXTRACT_USAGE,
             "config groups (* = default; a group without * is off unless chosen):"]
    for group in sorted(chosen):
        folder, choice = chosen[group]
        choices = sorted((root / folder).glob("*.yaml"))
        if not choices:
            continue
        lines.append(f"  {group}:")
        for path in choices:
            mark = "*" if choice == path.stem else " "
            lines.append(f"    {mark}{path.stem:<18} {summary(path)}")
    command = "python train.py" if config_name == "train" else "python -m lit_sr.extract_masks"
    lines.append(f"\nEvery value of the composed config can be overridden; see `{command} --cfg` and README.md.")
    return "\n".join(lines)
