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


def point_label(m: dict[str, Any]) -> str:
    """A projected trial's label: method, seed, poison, and how far off the plane it lies (residual share)."""
    words = [m["label"]] + ([f"s{m['seed']}"] if "seed" in m else [])
    words += ["poisoned"] if m.get("poisoned") else []
    return " ".join(words) + (f" (off {m['residual']:.2f})" if "residual" in m else "")


def _markers(ax, manifest: dict[str, Any]) -> None:
    ax.plot(0, 0, marker="*", color="white", markeredgecolor="black", markersize=9, linestyle="none",
            label="centre" if manifest.get("centre_weights") else "θ_aligned")  # fmt: skip
    if manifest["mode"] == "plane":
        points = manifest.get("plane", {}).get("points") or [{"x": 1.0, "y": 0.0}, {"x": 0.0, "y": 1.0}]
        names = [short_label(t) for t in manifest.get("targets", [])] or ["target 1", "target 2"]
        for k, (p, marker) in enumerate(zip(points, ("o", "s"), strict=True)):
            name = p.get("label", names[k]) + (f" s{p['seed']}" if "seed" in p else "")
            ax.plot([p["x"]], [p["y"]], marker=marker, color=PALETTE[1 + k], markeredgecolor="black",
                    linestyle="none", label=f"{name} (defines the plane)")  # fmt: skip
    seen = set()
    for m in manifest.get("overlay", []):
        poisoned = bool(m.get("poisoned"))
        kind = "poisoned run" if poisoned else "projected run"
        ax.plot(m["x"], m["y"], marker="X" if poisoned else "^", color=PALETTE[3] if poisoned else PALETTE[5],
                markeredgecolor="black", linestyle="none", label=None if kind in seen else kind)  # fmt: skip
        seen.add(kind)
        ax.annotate(point_label(m), (m["x"], m["y"]), fontsize=5, xytext=(3, 3), textcoords="offset points")


def plot_plane(table: pd.DataFrame, manifest: dict[str, Any], out: Path) -> list[Path]:
    """The plane's one-panel figure: ASR (else safety loss) with its basin boundary, the two defining trials and
    every projected trial (poisoned ones marked apart), equal axes when the basis is orthogonal."""
    metric = next((m for m in ("asr", "safety_loss") if m in manifest["metrics"]), manifest["metrics"][0])
    xs, ys = np.array(manifest["grid"]["x"]), np.array(manifest["grid"]["y"])
    grid = table.pivot(index="j", columns="i", values=metric).to_numpy()
    with paper_style():
        fig, ax = figure((3.25, 3.6))  # one column, with room for the legend below the axes
        cs = ax.contourf(xs, ys, grid, levels=15, cmap=SEQUENTIAL)
        fig.colorbar(cs, ax=ax, fraction=0.046, pad=0.04, label=LABELS.get(metric, metric))
        thr = manifest.get("summaries", {}).get(metric, {}).get("threshold")
        if thr is not None and np.nanmin(grid) < thr < np.nanmax(grid):
            ax.contour(xs, ys, grid, levels=[thr], colors="white", linewidths=1.2, linestyles="--")
        _markers(ax, manifest)
        if manifest.get("plane", {}).get("basis") == "orthogonal":
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlabel("α (units of ‖θ_A − θ_aligned‖)")
            ax.set_ylabel("β (orthogonal, same units)")
        else:
            ax.set_xlabel("α")
            ax.set_ylabel("β")
        basin = f"; basin edge {thr:.3g} dashed" if thr is not None else ""
        ax.set_title(f"{LABELS.get(metric, metric)}{basin}", fontsize=7)
        ax.legend(frameon=False, fontsize=5, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
        return save_figure(fig, out / "landscape_plane")


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
    paths = plot_2d(table, manifest, out, surface3d)
    return paths + (plot_plane(table, manifest, out) if manifest["mode"] == "plane" else [])
