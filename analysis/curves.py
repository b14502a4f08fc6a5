"""Training curves: each trial's `train_log.jsonl` (one line per optimiser step, written by sweeps.loop) as a tidy
frame, and one figure of loss and gradient norm against step, a line per trial coloured by method."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from analysis._io import save_figure_atomic
from analysis.style import PALETTE, figure, paper_style

log = logging.getLogger(__name__)
COLUMNS = ["study", "trial", "method", "step", "loss", "grad_norm", "lr"]


def training_logs(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per logged step of every trial whose run dir holds a train_log.jsonl (a half-written last line of a
    running trial is skipped, with a warning)."""
    rows = []
    for t in trials.itertuples(index=False):
        run_dir = getattr(t, "run_dir", None)
        if not isinstance(run_dir, str) or not run_dir or isinstance(getattr(t, "shadow", None), str):
            continue  # an eval.each_shadow EMA's row: its run's curve is the live row's
        path = Path(run_dir) / "train_log.jsonl"
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: line %d is not JSON (a trial still writing?); skipped", path, n)
                continue
            rows.append({"study": getattr(t, "study", None), "trial": getattr(t, "trial", None),
                         "method": getattr(t, "method", None), "step": entry.get("step"),
                         "loss": entry.get("loss"), "grad_norm": entry.get("grad_norm"), "lr": entry.get("lr")})
    return pd.DataFrame(rows, columns=COLUMNS)


def training_curves(logs: pd.DataFrame, path: str | Path) -> list[Path]:
    """Loss and gradient norm (log scale) against optimiser step; one thin line per trial, one colour per method."""
    if logs.empty:
        return []
    methods = sorted(logs["method"].fillna("?").astype(str).unique())
    colour = {m: PALETTE[k % len(PALETTE)] for k, m in enumerate(methods)}
    with paper_style():
        fig, axes = figure("two", ncols=2, squeeze=False)
        for (_, _, method), g in logs.groupby(["study", "trial", logs["method"].fillna("?").astype(str)],
                                                   sort=True, dropna=False):  # fmt: skip
            g = g.sort_values("step")
            for ax, col in zip(axes[0], ("loss", "grad_norm"), strict=True):
                y = pd.to_numeric(g[col], errors="coerce").to_numpy(float)
                ax.plot(g["step"], np.where(y > 0, y, np.nan), color=colour[method], linewidth=0.8, alpha=0.7)
        for ax, name in zip(axes[0], ("training loss", "gradient norm"), strict=True):
            ax.set_yscale("log")
            ax.set_xlabel("optimiser step")
            ax.set_ylabel(name)
        if len(methods) > 1:
            from matplotlib.lines import Line2D

            axes[0][0].legend([Line2D([], [], color=colour[m]) for m in methods], methods, frameon=False,
                              loc="best", fontsize="small")  # fmt: skip
        return save_figure_atomic(fig, path)
