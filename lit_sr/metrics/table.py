"""The paper-style metric table of an evaluation: rows of metric means, Markdown and CSV."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

LABELS = {"psnr": "PSNR", "ssim": "SSIM", "colour": "ColourShift", "lpips": "LPIPS", "dists": "DISTS", "niqe": "NIQE", "musiq": "MUSIQ",
          "maniqa": "MANIQA", "clipiqa": "CLIPIQA"}
# Decimal places in the Markdown table (papers print PSNR/MUSIQ with 2, the rest with 4).
DECIMALS = {"psnr": 2, "musiq": 2, "colour": 2}


@dataclass
class Table:
    """Rows of metric means with the column titles and notes of one evaluation."""

    title: str
    key_columns: list[str]  # e.g. ["knob", "γ"] or ["SR folder"]
    metrics: list[str]  # metric names with numbers, paper order
    display: dict[str, str]  # name → "PSNR↑"
    rows: list[tuple[list[str], dict[str, float]]]
    unavailable: dict[str, str]  # name → reason
    notes: list[str] = field(default_factory=list)  # lines printed under the table (e.g. the knob's trends)

    def note(self) -> str | None:
        """One line naming every metric left out, with its reason."""
        if not self.unavailable:
            return None
        names = [LABELS.get(n, n.upper()) for n in self.unavailable]
        reasons = []
        for name, reason in zip(names, self.unavailable.values()):
            reasons.append(reason if reason.startswith(name) else f"{name}: {reason}")
        return f"Not available: {', '.join(names)} ({'; '.join(reasons)})."

    def markdown(self) -> str:
        header = self.key_columns + [self.display[m] for m in self.metrics]
        lines = [f"**{self.title}**", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join([":---"] * len(self.key_columns) + ["---:"] * len(self.metrics)) + "|"]
        for keys, values in self.rows:
            cells = [_fmt(values.get(m), DECIMALS.get(m, 4)) for m in self.metrics]
            lines.append("| " + " | ".join(keys + cells) + " |")
        note = self.note()
        if note:
            lines += ["", note]
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.key_columns + [self.display[m] for m in self.metrics])
        for keys, values in self.rows:
            writer.writerow(keys + [repr(values[m]) if m in values else "" for m in self.metrics])
        return buf.getvalue()


def _fmt(value: float | None, decimals: int) -> str:
    return "–" if value is None else f"{value:.{decimals}f}"
