"""Paper figures (PDF + PNG, analysis.style): Pareto scatter, fronts by method, hypervolume history, the seed paper's
lr × effective-batch heatmaps, and metrics vs lr per EMA η with mean ± CI bands over seeds.

Every function takes a tidy DataFrame (trials, or recipes from stats.aggregate_seeds) and a path without suffix,
and returns the files written.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis._io import save_figure_atomic
from analysis.pareto import Objective, eligible, frame_hypervolume, on_front, values
from analysis.style import PALETTE, SEQUENTIAL, figure, paper_style
from sweeps.stats import mean_ci

LABELS = {
    "asr": "ASR", "utility_acc": "utility accuracy", "over_refusal": "over-refusal", "safety_loss": "safety loss",
    "compliance_loss": "compliance loss", "utility_loss": "utility loss", "lr": "learning rate",
    "effective_batch_size": "effective batch size", "batch_size": "batch size", "grad_accum": "grad. accumulation",
    "eta": "EMA η", "hypervolume": "hypervolume",
}  # fmt: skip
MAX_CATEGORIES = 6  # a colour column with at most this many values gets a legend, else a colour bar
FRONT_COLOR = "#000000"
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DASHES = ["-", "--", ":", "-."]
BOUNDED = {"asr", "utility_acc", "over_refusal"}  # rates: colour scales and intervals stay within [0, 1]


def label(column: str, objective: Objective | None = None) -> str:
    text = LABELS.get(column, column)
    return f"{text} {'↑' if objective.maximize else '↓'}" if objective else text


def fmt_value(v: float) -> str:
    """Compact tick/legend text: 3e-4, 0.25, 16."""
    if v is None or not np.isfinite(v):
        return "–"
    if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4):
        mant, exp = f"{v:.1e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    return f"{v:g}"


# ---------------------------------------------------------------------------------------------------------------
# Pareto


def pareto_scatter(df: pd.DataFrame, objectives: Sequence[Objective], path: str | Path, color_by: str = "lr",
                   feasible_only: bool = False, title: str | None = None) -> list[Path]:  # fmt: skip
    """Every eligible row, coloured by `color_by`; the front ringed in black and, for two objectives, joined by its
    attainment staircase. Infeasible rows are hollow; error bars (±1 std) where `<objective>_std` exists (recipes).
    Three objectives: the three pairwise projections, front membership from all three."""
    ok = eligible(df, objectives).to_numpy()
    front = on_front(df, objectives, feasible_only).to_numpy()
    feas = df["feasible"].astype("boolean").fillna(False).to_numpy(bool) if "feasible" in df else np.ones(len(df), bool)
    pairs = [(0, 1)] if len(objectives) == 2 else list(combinations(range(len(objectives)), 2))
    with paper_style():
        fig, axes = figure("one" if len(pairs) == 1 else "two", ncols=len(pairs), squeeze=False)
        colour = _Colours(df.loc[ok, color_by] if color_by in df else pd.Series(dtype=float), color_by)
        for ax, (i, j) in zip(axes[0], pairs, strict=True):
            ox, oy = objectives[i], objectives[j]
            _errorbars(ax, df[ok], ox.column, oy.column)
            for rows, hollow in ((ok & feas, False), (ok & ~feas, True)):
                if not rows.any():
                    continue
                c = colour.of(df.loc[rows, color_by]) if color_by in df else [PALETTE[0]] * int(rows.sum())
                ax.scatter(df.loc[rows, ox.column], df.loc[rows, oy.column], s=14, zorder=2,
                           facecolors="none" if hollow else c, edgecolors=c if hollow else "none",
                           linewidths=0.7 if hollow else 0)  # fmt: skip
            ax.scatter(df.loc[front, ox.column], df.loc[front, oy.column], s=34, facecolors="none",
                       edgecolors=FRONT_COLOR, linewidths=0.8, zorder=3)  # fmt: skip
            if len(pairs) == 1:
                _staircase(ax, values(df[front], [ox, oy]), ox, FRONT_COLOR)
            ax.set_xlabel(label(ox.column, ox))
            ax.set_ylabel(label(oy.column, oy))
        colour.annotate(fig, axes[0][-1], keep=len(pairs) == 1)
        handles = [Line2D([], [], marker="o", linestyle="none", markersize=6, markerfacecolor="none",
                          markeredgecolor=FRONT_COLOR, label="Pareto front")]  # fmt: skip
        if (ok & ~feas).any():
            handles.append(Line2D([], [], marker="o", linestyle="none", markersize=4, markerfacecolor="none",
                                  markeredgecolor="0.4", label="infeasible"))  # fmt: skip
        axes[0][0].legend(handles=handles, loc="best", frameon=False)
        if title:
            fig.suptitle(title)
        return save_figure_atomic(fig, path)


def fronts_figure(df: pd.DataFrame, objectives: Sequence[Objective], path: str | Path, by: str = "method",
                  feasible_only: bool = False, ref: Sequence[float] | None = None) -> list[Path]:  # fmt: skip
    """One front per group (method or study) on one figure, in the first two objectives; legend with each front's
    hypervolume (computed in all objectives, one reference point)."""
    ok = eligible(df, objectives, feasible_only)
    groups = sorted(df.loc[ok, by].dropna().unique().tolist(), key=str)
    ox, oy = objectives[0], objectives[1]
    with paper_style():
        fig, ax = figure("one")
        for k, g in enumerate(groups):
            sub = df[df[by] == g]
            c, marker, dash = PALETTE[k % len(PALETTE)], MARKERS[k % len(MARKERS)], DASHES[k % len(DASHES)]
            s_ok = eligible(sub, objectives, feasible_only)
            ax.scatter(sub.loc[s_ok, ox.column], sub.loc[s_ok, oy.column], s=8, color=c, marker=marker, alpha=0.3,
                       linewidths=0)  # fmt: skip
            f = on_front(sub, objectives, feasible_only)
            name = str(g) if ref is None else f"{g} (HV {frame_hypervolume(sub, objectives, ref, feasible_only):.3f})"
            # shrinking hollow markers and distinct dashes keep coinciding fronts visible
            ax.scatter(sub.loc[f, ox.column], sub.loc[f, oy.column], s=max(36 - 8 * k, 10), marker=marker,
                       facecolors="none", edgecolors=c, linewidths=1.0, zorder=3 + k, label=name)  # fmt: skip
            if len(objectives) == 2:
                _staircase(ax, values(sub[f], [ox, oy]), ox, c, dash)
        ax.set_xlabel(label(ox.column, ox))
        ax.set_ylabel(label(oy.column, oy))
        ax.legend(loc="best", frameon=False)
        return save_figure_atomic(fig, path)


def hypervolume_figure(history: pd.DataFrame, path: str | Path, by: str = "study") -> list[Path]:
    """Hypervolume of the front so far against the trial number, one line per group."""
    with paper_style():
        fig, ax = figure("one")
        for k, (g, sub) in enumerate(history.groupby(by, sort=True)):
            ax.step(sub["trial"], sub["hypervolume"], where="post", color=PALETTE[k % len(PALETTE)], label=str(g))
        ax.set_xlabel("trial")
        ax.set_ylabel("hypervolume of the front so far")
        if history[by].nunique() > 1:
            ax.legend(loc="lower right", frameon=False)
        return save_figure_atomic(fig, path)


def _staircase(ax, pts: np.ndarray, ox: Objective, color: str, dash: str = "-") -> None:
    """The front's attainment boundary: for each x, the best y reached by a point at least as good in x."""
    if len(pts) < 1:
        return
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    x, y = pts[order, 0], pts[order, 1]
    ax.step(x, y, where="pre" if ox.maximize else "post", color=color, linestyle=dash, linewidth=0.9, zorder=2)


def _errorbars(ax, df: pd.DataFrame, x: str, y: str) -> None:
    xe, ye = df.get(f"{x}_std"), df.get(f"{y}_std")
    if xe is None and ye is None:
        return
    if (xe is None or xe.isna().all()) and (ye is None or ye.isna().all()):
        return
    ax.errorbar(df[x], df[y], xerr=None if xe is None else xe.fillna(0), yerr=None if ye is None else ye.fillna(0),
                fmt="none", ecolor="0.75", elinewidth=0.6, zorder=1)  # fmt: skip


class _Colours:
    """Categorical (≤ MAX_CATEGORIES values: a legend) or continuous (a colour bar, log-scaled for learning rates and
    whatever spans more than a factor of ten) colouring of one column."""

    def __init__(self, col: pd.Series, name: str) -> None:
        self.name = name
        v = pd.to_numeric(col, errors="coerce").dropna().to_numpy(float)
        self.cats = np.unique(v) if 0 < len(np.unique(v)) <= MAX_CATEGORIES else None
        self.norm = None
        if self.cats is None and len(v):
            lo, hi = float(v.min()), float(v.max())
            log = lo > 0 and (name == "lr" or hi > 10 * lo)
            self.norm = mcolors.LogNorm(lo, hi) if log else mcolors.Normalize(lo, hi)
        self.cmap = mcolors.ListedColormap(PALETTE) if self.cats is not None else _cmap()

    def of(self, col: pd.Series) -> list:
        v = pd.to_numeric(col, errors="coerce").to_numpy(float)
        if self.cats is not None:
            idx = np.searchsorted(self.cats, v).clip(0, len(self.cats) - 1)
            # categories ordered high→low so that η=1 (SFT) takes the first colour
            return [PALETTE[(len(self.cats) - 1 - i) % len(PALETTE)] if np.isfinite(x) else "0.6"
                    for i, x in zip(idx, v, strict=True)]  # fmt: skip
        if self.norm is None:
            return [PALETTE[0]] * len(v)
        return [self.cmap(self.norm(x)) if np.isfinite(x) else "0.6" for x in v]

    def annotate(self, fig, ax, keep: bool = False) -> None:
        """Legend or colour bar beside ax; keep: ax will get another legend, so keep this one as an extra artist."""
        if self.cats is not None:
            handles = [Line2D([], [], marker="o", linestyle="none", markersize=4, markeredgewidth=0,
                              color=PALETTE[(len(self.cats) - 1 - i) % len(PALETTE)], label=fmt_value(c))
                       for i, c in reversed(list(enumerate(self.cats)))]  # fmt: skip
            leg = ax.legend(handles=handles, title=label(self.name), loc="upper left", bbox_to_anchor=(1.0, 1.0),
                            frameon=False)  # fmt: skip
            if keep:
                ax.add_artist(leg)
        elif self.norm is not None:
            from matplotlib.cm import ScalarMappable

            cb = fig.colorbar(ScalarMappable(norm=self.norm, cmap=self.cmap), ax=ax, pad=0.02)
            cb.set_label(label(self.name))


def _cmap():
    import matplotlib

    return matplotlib.colormaps[SEQUENTIAL]


# ---------------------------------------------------------------------------------------------------------------
# hyperparameter effects


class Bins:
    """Bins of one axis, made from a reference column and applied to any rows: the distinct values when there are
    at most max_bins of them (a grid sweep; values equal to 1e-9 relative, float noise, are one value), else max_bins
    equal-width bins in log (or linear) space from the smallest to the largest value, the last edge inclusive (a TPE
    sweep's continuous lr). Made once per study, so every method's heatmap has the same cells; every reference value
    lands in exactly one bin (edges and assignment use the same unrounded floats)."""

    def __init__(self, reference: pd.Series, max_bins: int = 7, log: bool = True) -> None:
        v = pd.to_numeric(reference, errors="coerce").to_numpy(float)
        v = np.unique(v[np.isfinite(v)])
        self.edges: np.ndarray | None = None
        self.log = log and len(v) > 0 and v.min() > 0
        distinct = v[np.r_[True, ~np.isclose(v[1:], v[:-1], rtol=1e-9, atol=0)]] if len(v) else v
        if len(distinct) <= max_bins:
            self.centres = distinct
            self.labels = [fmt_value(d) for d in distinct]
            return
        t = self._scale(v)
        self.edges = np.linspace(t.min(), t.max(), max_bins + 1)  # the ends are exactly t.min() and t.max()
        mid = (self.edges[:-1] + self.edges[1:]) / 2
        self.centres = 10**mid if self.log else mid
        self.labels = [fmt_value(float(f"{c:.2g}")) for c in self.centres]

    def _scale(self, v: np.ndarray) -> np.ndarray:
        if not self.log:
            return v
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(np.where(v > 0, v, np.nan))

    def assign(self, col: pd.Series) -> pd.Series:
        """Bin index per row (NaN for a value outside the reference's values or range, or not a number)."""
        v = pd.to_numeric(col, errors="coerce").to_numpy(float)
        if self.edges is None:
            if not len(self.centres):
                return pd.Series(np.nan, index=col.index)
            gap = np.abs(v[:, None] - self.centres[None, :])
            idx = np.where(np.isnan(gap), np.inf, gap).argmin(axis=1)  # the nearest value
            hit = np.isfinite(v) & np.isclose(self.centres[idx], v, rtol=1e-9, atol=0)
        else:
            t = self._scale(v)
            idx = np.minimum(np.searchsorted(self.edges, t, side="right") - 1, len(self.edges) - 2)
            hit = np.isfinite(t) & (t >= self.edges[0]) & (t <= self.edges[-1])
        return pd.Series(np.where(hit, idx, np.nan), index=col.index)


def binned(df: pd.DataFrame, metrics: Sequence[Objective], x: str = "lr", y: str | None = None,
           bins_from: pd.DataFrame | None = None) -> tuple[pd.DataFrame, Bins, Bins | None]:  # fmt: skip
    """What the heatmaps and the vs-lr curves plot: df's eligible rows with their bin indices in `x_bin` (and
    `y_bin`), and the bins, made from bins_from's eligible rows (default: the same rows)."""
    sub = df[eligible(df, metrics)].copy()
    ref = sub if bins_from is None else bins_from[eligible(bins_from, metrics)]
    xb = Bins(ref[x])
    sub["x_bin"] = xb.assign(sub[x])
    yb = None
    if y is not None:
        yb = Bins(ref[y])
        sub["y_bin"] = yb.assign(sub[y])
    return sub, xb, yb


def heatmaps(df: pd.DataFrame, path: str | Path, metrics: Sequence[Objective], x: str = "lr",
             y: str = "effective_batch_size", title: str | None = None,
             bins_from: pd.DataFrame | None = None) -> list[Path]:  # fmt: skip
    """The seed paper's grid: each metric's mean over the trials in each (lr, effective batch size) cell, annotated;
    rates share the 0–1 colour scale, empty cells stay blank. bins_from: the rows that define the cells (e.g. the
    whole study, so that each method's figure has the same cells); default df."""
    sub, xb, yb = binned(df, metrics, x, y, bins_from)
    assert yb is not None
    xlabels, ylabels = xb.labels, yb.labels
    with paper_style():
        fig, axes = figure("two", ncols=len(metrics), squeeze=False, layout="constrained")
        for ax, m in zip(axes[0], metrics, strict=True):
            grid = np.full((len(ylabels), len(xlabels)), np.nan)
            cells = pd.DataFrame({"x": sub["x_bin"], "y": sub["y_bin"],
                                  "v": pd.to_numeric(sub[m.column], errors="coerce")}).dropna()  # fmt: skip
            for (cx, cy), v in cells.groupby(["x", "y"])["v"].mean().items():
                grid[int(cy), int(cx)] = v
            bounded = m.column in BOUNDED
            im = ax.imshow(grid, origin="lower", aspect="auto", cmap=SEQUENTIAL,
                           vmin=0 if bounded else None, vmax=1 if bounded else None)  # fmt: skip
            norm = im.norm
            for (r, c), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if norm(v) > 0.6 else "white")  # fmt: skip
            ax.set_xticks(range(len(xlabels)), xlabels, rotation=45 if len(xlabels) > 4 else 0)
            ax.set_yticks(range(len(ylabels)), ylabels)
            ax.set_xlabel(label(x))
            ax.set_ylabel(label(y))
            ax.set_title(label(m.column, m))
            ax.spines[:].set_visible(False)
            fig.colorbar(im, ax=ax, fraction=0.05)
        if title:
            fig.suptitle(title)
        return save_figure_atomic(fig, path)


def metric_vs_lr(df: pd.DataFrame, path: str | Path, metrics: Sequence[Objective], by: str = "eta",
                 x: str = "lr", level: float = 0.95, title: str | None = None) -> list[Path]:  # fmt: skip
    """Each metric against lr, one line per `by` value (EMA η): the mean over the trials in each lr bin (seeds, and
    whatever else varies there) with a Student-t confidence band where a bin holds two or more trials."""
    sub, xb, _ = binned(df, metrics, x)
    xi, centres = sub["x_bin"], xb.centres
    groups = sorted(sub[by].dropna().unique().tolist(), reverse=True) if by in sub else [None]
    with paper_style():
        fig, axes = figure("two", ncols=len(metrics), squeeze=False)
        for ax, m in zip(axes[0], metrics, strict=True):
            for k, g in enumerate(groups):
                rows = sub if g is None else sub[sub[by] == g]
                stats_ = [(centres[int(b)], *mean_ci(rows.loc[xi[rows.index] == b, m.column], level))
                          for b in sorted(xi[rows.index].dropna().unique())]  # fmt: skip
                if not stats_:
                    continue
                xs, mean, _, lo, hi, _ = map(np.array, zip(*stats_, strict=True))
                c = PALETTE[k % len(PALETTE)]
                name = None if g is None else (f"η={fmt_value(g)}" + (" (SFT)" if g == 1 else ""))
                ax.plot(xs, mean, marker="o", markersize=3, color=c, label=name)
                if m.column in BOUNDED:  # the mean of a rate lies in [0, 1]: so does its interval
                    lo, hi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
                band = np.isfinite(lo)
                if band.any():
                    ax.fill_between(xs[band], lo[band], hi[band], color=c, alpha=0.2, linewidth=0)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_value(v)))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(label(x))
            ax.set_ylabel(label(m.column, m))
        if len(groups) > 1:
            axes[0][0].legend(frameon=False, loc="best")
        if title:
            fig.suptitle(title)
        return save_figure_atomic(fig, path)


def early_signals_figure(pairs: dict[str, pd.DataFrame], rho: dict[str, tuple[float, float, float]],
                         path: str | Path, fraction: float, target: str = "asr") -> list[Path]:  # fmt: skip
    """One panel per checked metric: each trial's value at `fraction` of its steps against its final target."""
    metrics = [m for m, p in pairs.items() if len(p)]
    if not metrics:
        return []
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    with paper_style():
        fig, axes = figure((2.3 * ncols, 2.0 * nrows + 0.4), ncols=ncols, nrows=nrows, squeeze=False, sharey=True)
        for ax in axes.flat[len(metrics):]:
            ax.set_visible(False)
        for ax, metric in zip(axes.flat, metrics, strict=False):
            p = pairs[metric]
            ax.scatter(p["early"], p["final"], s=14, color=PALETTE[0])
            r, lo, hi = rho[metric]
            ax.set_title(f"ρ = {r:.2f} [{lo:.2f}, {hi:.2f}]", fontsize="small")
            ax.set_xlabel(label(metric))
        for row in axes:
            row[0].set_ylabel(f"final {label(target)}")
        fig.suptitle(f"checked value at {fraction:.0%} of each trial's steps vs final {label(target)}",
                     fontsize="small")  # fmt: skip
        fig.tight_layout()
        return save_figure_atomic(fig, path)
