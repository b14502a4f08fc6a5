"""Tables as CSV (raw numbers, for further work) and LaTeX (pandas Styler, booktabs; `mean ± std` cells)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis._io import atomic_write_text
from analysis.figures import LABELS, fmt_value
from analysis.pareto import Objective

LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip
# LaTeX for text that Styler's escaping keeps as Unicode (pdflatex would stop on it).
LATEX_SYMBOLS = {"±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "–": "--", "×": r"$\times$",
                 # the Greek letters of method labels ("DER λ=0.5", "Lisa ρ=1", "EMA η=0.25", "α=0.5")
                 "α": r"$\alpha$", "β": r"$\beta$", "γ": r"$\gamma$", "η": r"$\eta$", "θ": r"$\theta$",
                 "λ": r"$\lambda$", "ρ": r"$\rho$", "τ": r"$\tau$"}  # fmt: skip


def pm(mean: float, std: float, digits: int = 3) -> str:
    """ "0.667 ± 0.012"; the mean alone where there is no spread (one seed)."""
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and np.isfinite(std) else "")


def interval(lo: float, hi: float, digits: int = 3) -> str:
    if lo is None or not np.isfinite(lo):
        return "–"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def escape_latex(text: str) -> str:
    """Escape LaTeX's special characters in plain text (Styler escapes cells and headers, not the caption)."""
    return "".join(LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(df: pd.DataFrame, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs tabular of df's cells as strings (index hidden), LaTeX special characters escaped."""
    cells = df.astype(str)
    styler = cells.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    text = styler.to_latex(hrules=True, caption=None if caption is None else escape_latex(caption), label=label,
                           column_format="l" * len(df.columns), position="t", position_float="centering")  # fmt: skip
    for sym, tex in LATEX_SYMBOLS.items():
        text = text.replace(sym, tex)
    return text


def write_table(display: pd.DataFrame, raw: pd.DataFrame, path_without_suffix: str | Path,
                caption: str | None = None, label: str | None = None) -> list[Path]:  # fmt: skip
    """raw → <path>.csv, display (formatted strings) → <path>.tex; both written atomically."""
    base = Path(path_without_suffix)
    csv, tex = base.with_name(base.name + ".csv"), base.with_name(base.name + ".tex")
    atomic_write_text(csv, raw.to_csv(index=False))
    atomic_write_text(tex, to_latex(display, caption, label))
    return [csv, tex]


def recipe_display(rows: pd.DataFrame, objectives: Sequence[Objective], extra: Sequence[str] = ()) -> pd.DataFrame:
    """Paper columns for recipe rows (from stats.aggregate_seeds): who, the recipe, mean ± std of each metric."""
    out = pd.DataFrame(index=rows.index)
    if "study" in rows and rows["study"].nunique() > 1:
        out["study"] = rows["study"]
    out["method"] = rows.get("method", "")
    for c in ("lr", "batch_size", "grad_accum", "effective_batch_size"):
        if c in rows and rows[c].notna().any():
            out[LABELS.get(c, c)] = [fmt_value(v) for v in pd.to_numeric(rows[c], errors="coerce")]
    metrics = list(dict.fromkeys([o.column for o in objectives] + [m for m in extra if m in rows]))
    arrows = {o.column: ("↑" if o.maximize else "↓") for o in objectives}
    for m in metrics:
        name = f"{LABELS.get(m, m)} {arrows.get(m, '')}".strip()
        out[name] = [pm(a, b) for a, b in zip(rows[m], rows.get(f"{m}_std", pd.Series(np.nan, rows.index)),
                                              strict=True)]  # fmt: skip
        if m == "asr" and "asr_boot_lo" in rows:
            out["ASR 95% CI (bootstrap)"] = [interval(a, b) for a, b in
                                             zip(rows["asr_boot_lo"], rows["asr_boot_hi"], strict=True)]  # fmt: skip
    if "n_seeds" in rows:
        out["seeds"] = rows["n_seeds"].astype(int)
    return out.reset_index(drop=True)
