"""Paper figures of a landscape (PDF + PNG, the analysis package's style)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.style import PALETTE, SEQUENTIAL, figure, paper_style, save_figure
from sweeps.stats import mean_ci

LABELS = {"safety_loss": "safety loss (refusal NLL)", "utility_loss": "utility loss (task NLL)",
          "compliance_loss": "compliance NLL", "asr": "keyword ASR", "over_refusal": "over-refusal",
          "utility_acc": "utility accuracy"}  # fmt: skip


def plot_1d(table: pd.DataFrame, manifest: dict[str, Any], out: Path) -> list[Path]:
    """Every metric against α, mean over random directions with a 95 % Student-t band, and its basin threshold."""
    with paper_style():
        fig, ax = figure("one")
        for k, metric in enumerate(manifest["metrics"]):
            at = table.groupby("x")[metric].apply(list)
            ci = pd.DataFrame([mean_ci(v) for v in at], index=at.index)  # columns mean, std, lo, hi, n
            color = PALETTE[k % len(PALETTE)]
            ax.plot(ci.index, ci["mean"], color=color, label=LABELS.get(metric, metric))
            band = np.isfinite(ci["lo"])  # two or more finite values at that α
            if band.any():
                ax.fill_between(ci.index[band], ci["lo"][band], ci["hi"][band], color=color, alpha=0.25, linewidth=0)
            thr = manifest.get("summaries", {}).get(metric, {}).get("threshold")
            if thr is not None:
                ax.axhline(thr, color=color, linestyle=":", linewidth=0.8)
        ax.axvline(0, color="0.6", linewidth=0.6)
        ax.set_xlabel("α (step along the direction)")
        ax.set_ylabel("value")
        reps = table["repeat"].nunique()
        ax.set_title(f"{manifest['mode']} · {manifest['normalisation']} norm · {reps} direction(s)")
        ax.legend(frameon=False)
        return save_figure(fig, out / "landscape_1d")


def short_label(spec: str) -> str:
    """A legend label for a weights path: "trial 7" for a sweep trial's weights, else the file or folder name."""
    parts = Path(spec).parts
    if "weights" in parts:
        i = parts.index("weights")
        if i > 0 and parts[i - 1].isdigit():
            return f"trial {parts[i - 1]}"
    return Path(spec).stem if Path(spec).suffix == ".safetensors" else Path(spec).name or spec


def _markers(ax, manifest: dict[str, Any]) -> None:
    ax.plot(0, 0, marker="*", color="white", markeredgecolor="black", markersize=9, linestyle="none",
            label="centre")  # fmt: skip
    if manifest["mode"] == "plane":
        names = [short_label(t) for t in manifest.get("targets", [])] or ["target 1", "target 2"]
        ax.plot([1], [0], marker="o", color=PALETTE[1], markeredgecolor="black", linestyle="none", label=names[0])
        ax.plot([0], [1], marker="s", color=PALETTE[2], markeredgecolor="black", linestyle="none", label=names[1])
    for m in manifest.get("overlay", []):
        ax.plot(m["x"], m["y"], marker="^", color=PALETTE[3], markeredgecolor="black", linestyle="none")
        ax.annotate(m["label"], (m["x"], m["y"]), fontsize=6, xytext=(3, 3), textcoords="offset points")


def plot_2d(table: pd.DataFrame, manifest: dict[str, Any], out: Path, surface3d: bool = False) -> list[Path]:
    """Safety and utility side by side on the same grid, the basin boundary drawn at each metric's threshold."""
    first = table[table["repeat"] == 0]
    xs, ys = np.array(manifest["grid"]["x"]), np.array(manifest["grid"]["y"])
    metrics = manifest["metrics"][:2]
    paths = []
    with paper_style():
        fig, axes = figure("two", ncols=len(metrics), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=False):
            grid = first.pivot(index="j", columns="i", values=metric).to_numpy()
            cs = ax.contourf(xs, ys, grid, levels=15, cmap=SEQUENTIAL)
            fig.colorbar(cs, ax=ax, shrink=0.85)
            thr = manifest.get("summaries", {}).get(metric, {}).get("threshold")
            if thr is not None and np.nanmin(grid) < thr < np.nanmax(grid):
                ax.contour(xs, ys, grid, levels=[thr], colors="white", linewidths=1.2, linestyles="--")
            _markers(ax, manifest)
            ax.set_title(LABELS.get(metric, metric))
            ax.set_xlabel("α")
        axes[0][0].set_ylabel("β")
        axes[0][0].legend(frameon=True, fontsize=6, loc="lower left")
        paths += save_figure(fig, out / "landscape_2d")
        if surface3d:
            import matplotlib.pyplot as plt

            fig = plt.figure(figsize=(3.25 * len(metrics), 2.8))
            gx, gy = np.meshgrid(xs, ys)
            for k, metric in enumerate(metrics, 1):
                ax = fig.add_subplot(1, len(metrics), k, projection="3d")
                grid = first.pivot(index="j", columns="i", values=metric).to_numpy()
                ax.plot_surface(gx, gy, grid, cmap=SEQUENTIAL, linewidth=0)
                ax.set_title(LABELS.get(metric, metric))
            paths += save_figure(fig, out / "landscape_3d")
    return paths


def make_figures(out: Path, surface3d: bool = False) -> list[Path]:
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    table = pd.read_csv(out / "points.csv")
    if len(manifest["grid"]["y"]) == 1:
        return plot_1d(table, manifest, out)
    return plot_2d(table, manifest, out, surface3d)
