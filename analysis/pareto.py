"""Pareto fronts, hypervolume and its history, and dominance between the fronts of several studies or methods.

Non-dominated sorting and hypervolume come from moocore (the C library behind pymoo's indicators; O(n log n) for
two and three objectives). Definitions used throughout:
- a row is *eligible* when its trial completed (state COMPLETE, status "completed" where recorded, not a failure
  recorded as "infeasible") and every objective is a finite number; with feasible_only also when `feasible`;
- a row is on the *front* when no eligible row dominates it (at least as good in every objective, better in one).
  Duplicates of a front point are all on the front: two trials with the same outcome are equally good recipes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import moocore
import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.load import numeric_columns

DIRECTIONS = {"min": "minimize", "minimize": "minimize", "max": "maximize", "maximize": "maximize"}
# Metrics that are rates in [0, 1]: their worst value is the natural hypervolume reference.
BOUNDED = {"asr", "utility_acc", "over_refusal", "refusal_rate"}


@dataclass(frozen=True)
class Objective:
    column: str
    direction: str = "minimize"  # minimize | maximize

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def __str__(self) -> str:
        return f"{self.column}:{'max' if self.maximize else 'min'}"


DEFAULT_OBJECTIVES = (Objective("asr", "minimize"), Objective("utility_acc", "maximize"))


def parse_objectives(spec: str | Sequence[str]) -> list[Objective]:
    """ "asr:min,utility_acc:max" (or a list of "column:direction") → objectives; two or three are plotted."""
    items = [s for part in ([spec] if isinstance(spec, str) else spec) for s in str(part).split(",") if s.strip()]
    out = []
    for item in items:
        column, _, direction = item.strip().rpartition(":")
        if not column or direction not in DIRECTIONS:
            raise AnalysisError(f"--objectives: expected 'column:min' or 'column:max', got '{item.strip()}'")
        out.append(Objective(column, DIRECTIONS[direction]))
    if not out:
        raise AnalysisError("--objectives: name at least one objective, e.g. asr:min,utility_acc:max")
    if len({o.column for o in out}) != len(out):
        raise AnalysisError(f"--objectives: a column is named twice in '{spec}'")
    return out


def check_columns(df: pd.DataFrame, objectives: Sequence[Objective]) -> None:
    numeric = numeric_columns(df)
    for o in objectives:
        if o.column not in numeric:
            raise AnalysisError(f"unknown objective column '{o.column}'; numeric columns: {', '.join(numeric)}")


def eligible(df: pd.DataFrame, objectives: Sequence[Objective], feasible_only: bool = False) -> pd.Series:
    check_columns(df, objectives)
    ok = df["state"].eq("COMPLETE") if "state" in df else pd.Series(True, index=df.index)
    if "status" in df:
        ok &= df["status"].isna() | df["status"].eq("completed")
    if "infeasible" in df:  # a failed trial that the sweeper told Optuna as COMPLETE with the worst values
        ok &= ~df["infeasible"].astype("boolean").fillna(False).astype(bool)
    ok &= np.isfinite(values(df, objectives)).all(axis=1)
    if feasible_only and "feasible" in df:
        ok &= df["feasible"].astype("boolean").fillna(False).astype(bool)
    return ok.astype(bool)


def require_eligible(df: pd.DataFrame, objectives: Sequence[Objective], feasible_only: bool = False) -> None:
    """Fail with one line when no row can be on a front (nothing completed, or nothing feasible)."""
    if not eligible(df, objectives, feasible_only).any():
        what = "feasible completed" if feasible_only else "completed"
        raise AnalysisError(f"no {what} trial with finite {', '.join(o.column for o in objectives)} "
                            f"among {len(df)} trial(s): no front to compute")  # fmt: skip


def values(df: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    return df[[o.column for o in objectives]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)


def pareto_mask(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """True for each row of points (n × m, all finite) that no other row dominates; duplicates all kept."""
    points = np.asarray(points, dtype=float)
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    return moocore.is_nondominated(points, maximise=list(maximize), keep_weakly=True)


def on_front(df: pd.DataFrame, objectives: Sequence[Objective], feasible_only: bool = False) -> pd.Series:
    """Row mask, aligned with df: eligible and on the front of the eligible rows."""
    ok = eligible(df, objectives, feasible_only).to_numpy()
    mask = np.zeros(len(df), dtype=bool)
    mask[ok] = pareto_mask(values(df, objectives)[ok], [o.maximize for o in objectives])
    return pd.Series(mask, index=df.index)


def pareto_front(df: pd.DataFrame, objectives: Sequence[Objective], feasible_only: bool = False) -> pd.DataFrame:
    """The front's rows, sorted along the first objective (best first) and then the second."""
    front = df[on_front(df, objectives, feasible_only)]
    return front.sort_values([o.column for o in objectives], ascending=[not o.maximize for o in objectives],
                             kind="stable")  # fmt: skip


def reference_point(df: pd.DataFrame, objectives: Sequence[Objective], feasible_only: bool = False) -> np.ndarray:
    """The worst value of each objective: 1 / 0 for rates in [0, 1] (ASR, accuracy), else the worst eligible one.

    Compare hypervolumes only when computed against the same reference point (compare() uses one for all groups).
    """
    ok = eligible(df, objectives, feasible_only)
    pts = values(df, objectives)[ok.to_numpy()]
    ref = []
    for j, o in enumerate(objectives):
        if o.column in BOUNDED:
            ref.append(0.0 if o.maximize else 1.0)
        elif len(pts):
            ref.append(float(pts[:, j].min() if o.maximize else pts[:, j].max()))
        else:
            ref.append(0.0)
    return np.array(ref)


def parse_reference(spec: str | None, objectives: Sequence[Objective]) -> np.ndarray | None:
    if spec is None:
        return None
    try:
        ref = np.array([float(x) for x in str(spec).split(",")])
    except ValueError:
        raise AnalysisError(f"--ref: expected {len(objectives)} comma-separated numbers, got '{spec}'") from None
    if len(ref) != len(objectives):
        raise AnalysisError(f"--ref: {len(objectives)} objectives ({', '.join(map(str, objectives))}) need "
                            f"{len(objectives)} numbers, got {len(ref)}")  # fmt: skip
    return ref


def hypervolume(points: np.ndarray, objectives: Sequence[Objective], ref: Sequence[float]) -> float:
    """Volume dominated by points and bounded by ref; points not better than ref in every objective add nothing."""
    points = np.asarray(points, dtype=float).reshape(-1, len(objectives))
    if len(points) == 0:
        return 0.0
    return float(moocore.hypervolume(points, ref=np.asarray(ref, float), maximise=[o.maximize for o in objectives]))


def frame_hypervolume(df: pd.DataFrame, objectives: Sequence[Objective], ref: Sequence[float],
                      feasible_only: bool = False) -> float:  # fmt: skip
    return hypervolume(values(df, objectives)[eligible(df, objectives, feasible_only).to_numpy()], objectives, ref)


def hypervolume_history(df: pd.DataFrame, objectives: Sequence[Objective], ref: Sequence[float],
                        feasible_only: bool = False, by: str = "study") -> pd.DataFrame:  # fmt: skip
    """Hypervolume of the front of trials 0..k, for every trial k (in trial-number order), per `by` group.

    Incremental: a trial that an earlier one weakly dominates leaves the front and its hypervolume unchanged, so
    the hypervolume is recomputed (by moocore, on the current front only) just when the front changes. Cost:
    O(n · |front|) comparisons plus one O(|front| log |front|) hypervolume per change of the front.
    """
    missing = [c for c in (by, "trial") if c not in df.columns]
    if missing:
        raise AnalysisError(f"hypervolume history needs column(s) {', '.join(missing)}")
    sign = np.array([-1.0 if o.maximize else 1.0 for o in objectives])  # to minimisation
    ref_min = np.asarray(ref, float) * sign
    rows = []
    for group, sub in df.sort_values([by, "trial"], kind="stable").groupby(by, sort=False):
        ok = eligible(sub, objectives, feasible_only).to_numpy()
        pts = values(sub, objectives) * sign
        front = np.empty((0, len(objectives)))
        hv = 0.0
        hvs = np.empty(len(sub))
        sizes = np.empty(len(sub), dtype=int)
        for i in range(len(sub)):
            if ok[i]:
                p = pts[i]
                if not (front <= p).all(axis=1).any():  # not weakly dominated by the current front
                    front = np.vstack([front[~(p <= front).all(axis=1)], p])
                    hv = float(moocore.hypervolume(front, ref=ref_min))
            hvs[i], sizes[i] = hv, len(front)
        rows.append(pd.DataFrame({by: group, "trial": sub["trial"].to_numpy(), "n": np.arange(1, len(sub) + 1),
                                  "hypervolume": hvs, "front_size": sizes}))  # fmt: skip
    cols = [by, "trial", "n", "hypervolume", "front_size"]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)


def dominates(a: np.ndarray, b: np.ndarray, maximize: Sequence[bool], weakly: bool = False) -> np.ndarray:
    """(len(a) × len(b)) matrix: a[i] dominates b[j] (weakly: at least as good everywhere, equal counts)."""
    sign = np.array([-1.0 if m else 1.0 for m in maximize])
    a, b = np.asarray(a, float) * sign, np.asarray(b, float) * sign
    le = (a[:, None, :] <= b[None, :, :]).all(axis=2)
    return le if weakly else le & (a[:, None, :] < b[None, :, :]).any(axis=2)


def compare(
    df: pd.DataFrame,
    objectives: Sequence[Objective],
    by: str = "method",
    ref: Sequence[float] | None = None,
    feasible_only: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fronts of several groups (methods or studies) against one reference point.

    Returns (summary, coverage). summary, one row per group: eligible rows, front size, hypervolume, how many of
    its front points are on the combined front, and how many some other group's front strictly dominates.
    coverage[A][B] = C(A, B) (Zitzler's set coverage): the share of B's front that some point of A's front weakly
    dominates (1: A covers all of B; 0: none).
    """
    if by not in df.columns:
        raise AnalysisError(f"--by: no column '{by}'; use method, study, or another column of the trial table")
    ok = eligible(df, objectives, feasible_only)
    ref = reference_point(df, objectives, feasible_only) if ref is None else np.asarray(ref, float)
    maximize = [o.maximize for o in objectives]
    groups = sorted(df.loc[ok, by].dropna().unique().tolist(), key=str)
    fronts = {g: values(pareto_front(df[df[by] == g], objectives, feasible_only), objectives) for g in groups}
    all_front = np.vstack(list(fronts.values())) if fronts else np.empty((0, len(objectives)))
    combined = pareto_mask(all_front, maximize)
    rows, start = [], 0
    for g in groups:
        f = fronts[g]
        others = np.vstack([fronts[h] for h in groups if h != g] or [np.empty((0, len(objectives)))])
        beaten = dominates(others, f, maximize).any(axis=0) if len(others) and len(f) else np.zeros(len(f), bool)
        rows.append({by: g, "n": int((df.loc[ok, by] == g).sum()), "front": len(f),
                     "hypervolume": hypervolume(f, objectives, ref),
                     "on_combined_front": int(combined[start : start + len(f)].sum()),
                     "dominated_by_others": int(beaten.sum())})  # fmt: skip
        start += len(f)
    summary = pd.DataFrame(rows, columns=[by, "n", "front", "hypervolume", "on_combined_front", "dominated_by_others"])
    summary.attrs["ref"] = ref.tolist()
    cov = pd.DataFrame(index=pd.Index(groups, name=by), columns=groups, dtype=float)
    for a in groups:
        for b in groups:
            fa, fb = fronts[a], fronts[b]
            if len(fa) and len(fb):
                cov.loc[a, b] = dominates(fa, fb, maximize, weakly=True).any(axis=0).mean()
    return summary, cov


def dominance_sentences(summary: pd.DataFrame, coverage: pd.DataFrame, by: str = "method") -> list[str]:
    """One line per group, plain words, for the report and the CLI."""
    lines = []
    for _, r in summary.iterrows():
        g = r[by]
        others = [h for h in coverage.columns if h != g]
        cov = ", ".join(f"{coverage.loc[g, h]:.0%} of {h}'s" for h in others) if others else "-"
        lines.append(f"{g}: hypervolume {r['hypervolume']:.4f}; {r['front']} front point(s) of {r['n']}, "
                     f"{r['on_combined_front']} on the combined front, {r['dominated_by_others']} strictly dominated "
                     f"by another {by}; its front weakly dominates {cov} front")  # fmt: skip
    return lines
