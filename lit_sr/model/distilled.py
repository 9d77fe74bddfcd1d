"""Distilled VAE halves in an export folder: one extra file, chosen at inference.

``experiment=distill_vae`` writes ``distilled_vae.safetensors`` into a copy of the trained
model's export: the small decoder and/or encoder (:mod:`lit_sr.model.small_vae`) with their
architecture in the file's metadata, so the file alone rebuilds them. The manifest gains a
``distilled`` entry (per part: architecture, parameters, FLOPs against the full part, the
distillation's validation numbers) and the model card a section saying which parts are
distilled. The full VAE stays the default; ``attach_distilled`` (``--decoder distilled``,
``--encoder distilled``) swaps a half in.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lit_sr.errors import LitSRError, WeightsError
from lit_sr.model.small_vae import PARTS, SmallVAEPart

DISTILLED_FILE = "distilled_vae.safetensors"
FORMAT = "lit_sr_distilled"
CHOICES = ("full", "distilled")
MANIFEST_FILE, CARD_FILE = "lit_sr_export.json", "README.md"  # the export's (lit_sr.model.export)
CARD_HEADING = "## Distilled VAE parts"


def save_distilled(folder: str | Path, parts: dict[str, SmallVAEPart], report: dict[str, dict[str, Any]]) -> Path:
    """Write the parts into ``folder`` (an export) and record them in its manifest and model card."""
    folder = Path(folder)
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise ValueError(f"distilled parts must be among {sorted(PARTS)}, got {sorted(parts)}")
    tensors = {f"{name}.{k}": v.detach().float().cpu().contiguous() for name, m in parts.items()
               for k, v in m.state_dict().items()}
    arch = {name: m.arch() for name, m in parts.items()}
    path = folder / DISTILLED_FILE
    save_file(tensors, str(path), metadata={"format": FORMAT, "version": "1", "arch": json.dumps(arch)})
    info = {name: {"arch": arch[name], "parameters": int(sum(p.numel() for p in m.parameters())),
                   **report.get(name, {})} for name, m in parts.items()}
    manifest_path = folder / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest["distilled"] = info
    manifest_path.write_text(json.dumps(manifest, indent=2))
    card_path = folder / CARD_FILE
    card = card_path.read_text() if card_path.exists() else "# lit_sr model\n"
    card_path.write_text(_without_section(card).rstrip("\n") + "\n\n" + card_section(info))
    return path


def _without_section(card: str) -> str:
    """The card without an earlier distilled section (a second distillation replaces it)."""
    start = card.find(CARD_HEADING)
    if start < 0:
        return card
    end = card.find("\n## ", start + len(CARD_HEADING))
    return card[:start] + (card[end + 1:] if end >= 0 else "")


def card_section(info: dict[str, dict[str, Any]]) -> str:
    """The model card's section on the distilled parts."""
    lines = [CARD_HEADING, "",
             "Small networks distilled from this model's own VAE (`experiment=distill_vae`); the full VAE stays the "
             "default. Choose them at inference:", "",
             "```bash",
             "python -m lit_sr.infer --model THIS_FOLDER --input photos/ --output sr/ "
             + " ".join(f"--{name} distilled" for name in info),
             "```", "",
             "| part | parameters | GFLOP at 512² output (distilled / full) | distillation check |",
             "|---|---:|---:|---|"]
    for name, entry in info.items():
        flops = entry.get("flops_512") or {}
        ratio = (f"{flops['distilled'] / 1e9:.2f} / {flops['full'] / 1e9:.2f} ({flops['full'] / flops['distilled']:.1f}× fewer)"
                 if flops.get("distilled") and flops.get("full") else "?")
        checks = ", ".join(f"{k} {v:.4g}" for k, v in sorted((entry.get("val") or {}).items())) or "none ran"
        lines.append(f"| {name} | {entry['parameters']:,} | {ratio} | {checks} |")
    return "\n".join(lines) + "\n"


def distilled_arch(path: Path) -> dict[str, dict[str, int]]:
    """The architecture of every part in a distilled file (its metadata); one line if it is not one."""
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise WeightsError(f"{path}: cannot read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a lit_sr distilled-VAE file")
    return json.loads(meta["arch"])


def load_distilled(path: str | Path, part: str) -> SmallVAEPart:
    """The distilled ``part`` (``decoder`` / ``encoder``) of a file, frozen and in eval mode."""
    path = Path(path)
    arch = distilled_arch(path)
    if part not in arch:
        raise WeightsError(f"{path}: holds no distilled {part} (it has: {', '.join(sorted(arch)) or 'nothing'})")
    try:
        module = PARTS[part](**arch[part])
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: bad {part} architecture {arch[part]} ({exc})") from None
    prefix = f"{part}."
    state = {k[len(prefix):]: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: the {part} weights do not fit its architecture ({str(exc).splitlines()[0]})") from None
    return module.requires_grad_(False).eval()


def check_choice(part: str, choice: str) -> None:
    if choice not in CHOICES:
        raise LitSRError(f"--{part} must be one of {', '.join(CHOICES)}, got {choice!r}")


def attach_distilled(generator: nn.Module, source: str | Path, decoder: str = "full", encoder: str = "full") -> None:
    """Swap the distilled halves of the export ``source`` into ``generator`` (``full``: keep / restore the full one)."""
    for part, choice in (("decoder", decoder), ("encoder", encoder)):
        check_choice(part, choice)
    wanted = [part for part, choice in (("decoder", decoder), ("encoder", encoder)) if choice == "distilled"]
    if not wanted:
        generator.distilled_decoder = generator.distilled_encoder = None
        return
    folder = Path(source)
    if not folder.is_dir():
        raise LitSRError(f"--{wanted[0]} distilled needs an export folder (a checkpoint holds no distilled parts): {folder}")
    path = folder / DISTILLED_FILE
    if not path.exists():
        raise LitSRError(f"--{wanted[0]} distilled: {folder} has no distilled VAE parts; distil them with "
                         f"python train.py experiment=distill_vae distill.generator_export={folder}")
    ref = next(generator.vae.parameters())
    for part in ("decoder", "encoder"):
        if part not in wanted:
            setattr(generator, f"distilled_{part}", None)
    for part in wanted:
        module = load_distilled(path, part)
        try:
            module.check_latent(generator.vae.channels, generator.vae.factor)
        except ValueError as exc:
            raise WeightsError(f"{path}: {exc}") from None
        setattr(generator, f"distilled_{part}", module.to(ref.device, ref.dtype))


@contextmanager
def swapped_in(generator: nn.Module, decoder: nn.Module | None = None,
               encoder: nn.Module | None = None) -> Iterator[None]:
    """Run the block with these distilled halves in ``generator`` (None: the full one), then restore."""
    saved = generator.distilled_decoder, generator.distilled_encoder
    generator.distilled_decoder, generator.distilled_encoder = decoder, encoder
    try:
        yield
    finally:
        generator.distilled_decoder, generator.distilled_encoder = saved


def part_flops(generator: nn.Module, part: str, small: nn.Module | None = None, size: int = 512) -> int:
    """Analytic FLOPs of the full VAE ``part`` of ``generator`` (or of ``small``) for a ``size``² output image."""
    from lit_sr.model.flops import count_flops

    vae = generator.vae
    if part == "decoder":
        shape = (1, vae.channels, size // vae.factor, size // vae.factor)
        fn = small if small is not None else vae.decode
    else:
        shape = (1, 3, size, size)
        fn = small if small is not None else vae.encode
    ref = next((small if small is not None else vae).parameters())
    return count_flops(fn, shape, ref.dtype, ref.device)
