"""What the report is made of: sections of typed blocks (text, table, image) and claims.

Sections fill blocks; `render` turns them into markdown and HTML; nothing else reads them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pipelines.report.stats import Outcome
from storage.atomic import atomic_path

# A claim's outcome: one of stats.Outcome (by stats.RULE), or not measured (no cells at all).
SUPPORTED, CONTRADICTED, MIXED, INCONCLUSIVE = (o.value for o in Outcome)
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Claim:
    name: str
    verdict: str  # supported | contradicted | mixed | inconclusive | not measured
    line: str  # the one line the report prints, numbers included
    pilot: str = ""  # how many seeds would decide it (stats.seeds_needed), one line
    cells: list[list[str]] = field(default_factory=list)  # its rows of the paired-cell table


@dataclass(frozen=True)
class Text:
    line: str


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    path: Path
    caption: str


Block = Text | Table | Image


def cell_text(value: Any, digits: int = 3) -> str:
    """A table cell: – for missing, 3 significant digits for very large or small floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and (abs(value) >= 1e5 or 0 < abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def text(self, line: str) -> None:
        self.blocks.append(Text(line))

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.blocks.append(Table(list(headers), [[cell_text(v) for v in r] for r in rows]))

    def image(self, path: Path, caption: str) -> None:
        self.blocks.append(Image(path, caption))


class Plots:
    """Writes figures as PNGs into the report directory and remembers them."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.paths: list[Path] = []

    def save(self, fig: Figure, name: str) -> Path:
        path = self.out_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        self.paths.append(path)
        return path


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"
