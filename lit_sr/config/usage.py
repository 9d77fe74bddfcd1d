"""``train.py --help``: the usage line, every config group with its choices (default marked) and a
one-line summary of each choice, read from the YAML files' leading comments."""
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
    root = Path(conf_dir or CONF_DIR)
    chosen = defaults(root, config_name)
    lines = [USAGE, "config groups (* = default; a group without * is off unless chosen):"]
    for group in sorted(chosen) + sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in chosen):
        folder = root / group
        if not folder.is_dir():
            continue
        choices = sorted(folder.glob("*.yaml"))
        if not choices:
            continue
        lines.append(f"  {group}:")
        for path in choices:
            mark = "*" if chosen.get(group) == path.stem else " "
            lines.append(f"    {mark}{path.stem:<18} {summary(path)}")
    lines.append("\nEvery value of the composed config can be overridden; see `python train.py --cfg` and README.md.")
    return "\n".join(lines)
