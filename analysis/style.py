"""One figure style for the analysis and landscape packages: fonts, a colour-blind-safe palette, paper sizes.

Figures are written as PDF (for LaTeX) and PNG (for quick looks) by `save_figure`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting logs every table at INFO

import matplotlib.pyplot as plt  # noqa: E402

# Okabe & Ito (2008), safe for the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
# Sequential / diverging maps that stay readable in grey and for colour-blind readers.
SEQUENTIAL = "viridis"
DIVERGING = "cividis"

# Widths in inches of common two-column templates (NeurIPS/ICML-like): one column, full text width.
ONE_COLUMN = (3.25, 2.4)
TWO_COLUMN = (6.75, 2.6)

RC = {
    "font.family": "serif",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 150,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # embed TrueType: editable text, accepted by publishers
    "lines.linewidth": 1.2,
}


@contextmanager
def paper_style() -> Iterator[None]:
    with plt.rc_context(RC):
        yield


def figure(size: str | tuple[float, float] = "one", ncols: int = 1, nrows: int = 1, **kwargs):
    """A (fig, axes) pair at a paper size: "one" column, "two" columns, or (width, height) inches."""
    dims = {"one": ONE_COLUMN, "two": TWO_COLUMN}.get(size, size) if isinstance(size, str) else size
    return plt.subplots(nrows, ncols, figsize=dims, **kwargs)


def save_figure(fig, path_without_suffix: str | Path) -> list[Path]:
    """Write <path>.pdf and <path>.png; returns both paths."""
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for suffix in (".pdf", ".png"):
        path = base.with_suffix(suffix)
        fig.savefig(path)
        out.append(path)
    plt.close(fig)
    return out
