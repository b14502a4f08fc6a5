"""Atomic outputs: a reader (a LaTeX build, a browser) or a crash never sees half a table or figure."""

from __future__ import annotations

import os
import re
from pathlib import Path

from analysis.style import save_figure
from sweeps.rundir import atomic_write_text

__all__ = ["atomic_write_text", "save_figure_atomic", "slug"]


def save_figure_atomic(fig, path_without_suffix: str | Path) -> list[Path]:
    """style.save_figure (PDF + PNG) into hidden temporary names, then rename each into place."""
    base = Path(path_without_suffix)
    if "." in base.name:
        raise ValueError(f"figure name '{base.name}' must not contain a dot (save_figure adds the suffix)")
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = base.parent / f".tmp-{base.name}-{os.getpid()}"
    out = []
    for written in save_figure(fig, tmp):
        final = base.with_suffix(written.suffix)
        os.replace(written, final)
        out.append(final)
    return out


def slug(text: str) -> str:
    """A file-name-safe form of a label: "EMA η=0.25" → "ema_eta_0p25"."""
    text = str(text).replace("η", "eta").replace(".", "p").lower()
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_") or "x"
