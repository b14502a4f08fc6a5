"""Early signals: does a trial's value at its first intermediate checks rank trials the way their final ASR does?

Trials with `trial.check_every` write checks.jsonl (one row per check: step, the checked metrics, distance_l2 /
distance_rel from θ_aligned). For each early fraction f of the run (default 10 % and 25 % of the steps), a trial's
early value is its last check at step ≤ f·steps; the Spearman rank correlation between early values and the final
target across the study's trials, with a percentile bootstrap interval, says whether the cheap early number could
stand in for the expensive final one (pruning, or stopping a bad recipe at 10 % of its budget).

Rows of one training run are not independent: the EMAs of an `eval.each_shadow` run average one trajectory, so the
bootstrap resamples runs (clusters of rows sharing a run_dir), and each row says how many runs (`n_runs`) besides how
many rows (`n`). A shadow row's checks are its own weights' values; the run's training loss belongs to the live
weights only and is not given to its shadows. Each row also records the check steps actually used, as fractions of the
run (`at_min`, `at_max`: a check every 9 of 38 steps puts "25 %" at 24 %), and how many checked trials have no final
target (`no_final`: pruned or diverged trials, which a pruner removes preferentially — survivorship).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from analysis.errors import AnalysisError

__all__ = ["early_pairs", "early_signals", "load_checks", "spearman_ci"]


def load_checks(trials: pd.DataFrame) -> pd.DataFrame:
    """checks.jsonl of every trial with a run_dir, long form: one row per (trial, check), `trial` = the row index."""
    rows = []
    shadows = trials["shadow"] if "shadow" in trials.columns else pd.Series(None, index=trials.index, dtype=object)
    for index, run_dir in trials.get("run_dir", pd.Series(dtype=object)).items():
        path = Path(str(run_dir)) / "checks.jsonl" if isinstance(run_dir, str | Path) else None
        if path is None or not path.is_file():
            continue
        shadow = shadows.get(index)
        prefix = f"shadow/{shadow}/" if isinstance(shadow, str) else None
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                check = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnalysisError(f"{path}:{n}: not a JSON line ({e.msg})") from None
            if prefix is not None:  # an eval.each_shadow variant: its own checked values, not the live weights' (nor
                # their training loss)
                check = {"step": check.get("step")} | {k[len(prefix) :]: v for k, v in check.items()
                                                       if k.startswith(prefix)}  # fmt: skip
            else:
                check = {k: v for k, v in check.items() if not k.startswith("shadow/")}
            rows.append({"trial": index, **check})
    return pd.DataFrame(rows)


def spearman_ci(x: Sequence[float], y: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                clusters: Sequence[object] | None = None) -> tuple[float, float, float]:  # fmt: skip
    """(ρ, lo, hi): Spearman's ρ over the finite (x, y) pairs and a percentile bootstrap interval, resampling pairs —
    or, with `clusters` (one key per pair), whole clusters with replacement (rows of one training run move together).
    Resamples whose x or y is constant (ρ undefined) are left out; nan where fewer than three pairs or no resample
    is defined."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keys = np.asarray(clusters if clusters is not None else range(len(x)), dtype=object)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y, keys = x[finite], y[finite], keys[finite]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan"), float("nan")
    rho = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(keys == k) for k in dict.fromkeys(keys.tolist())]
    if len(members) < 3:  # one or two runs: every resample is (nearly) the same rows, an interval would be fake
        return rho, float("nan"), float("nan")
    # ρ is Pearson's r on ranks; scipy's vectorised spearmanr over resamples would warn on every constant one
    boots = []
    for picked in rng.integers(0, len(members), size=(n_boot, len(members))):
        i = np.concatenate([members[c] for c in picked])
        xs, ys = x[i], y[i]
        if np.ptp(xs) > 0 and np.ptp(ys) > 0:
            boots.append(spearmanr(xs, ys).statistic)
    if not boots:
        return rho, float("nan"), float("nan")
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return rho, float(lo), float(hi)


def early_signals(trials: pd.DataFrame, checks: pd.DataFrame | None = None, metrics: Sequence[str] | None = None,
                  fractions: Sequence[float] = (0.1, 0.25), target: str = "asr", n_boot: int = 2000,
                  level: float = 0.95, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """One row per (checked metric, fraction): n trials, n_runs training runs, Spearman ρ of early value vs final
    `target` and its interval (runs resampled), at_min / at_max (the check steps used, as fractions of the run) and
    no_final (checked trials without a final target, left out).

    trials: one row per trial with `steps` and `target` (analysis.load.load's table); checks: load_checks(trials)
    unless given (columns trial, step, and the metrics); metrics: the checked columns (default: all but trial, step
    and timings).
    """
    for col in ("steps", target):
        if col not in trials.columns:
            raise AnalysisError(f"early signals: the trials table has no column '{col}'")
    checks = load_checks(trials) if checks is None else checks
    if checks.empty:
        raise AnalysisError("early signals: no trial has intermediate checks (run with trial.check_every=N)")
    metrics = list(metrics) if metrics is not None else [c for c in checks.columns if _is_signal(c)]
    missing = [m for m in metrics if m not in checks.columns]
    if missing:
        raise AnalysisError(f"early signals: no checked metric {missing}; checked: "
                            f"{[c for c in checks.columns if c not in ('trial', 'step')]}")  # fmt: skip
    final = pd.to_numeric(trials[target], errors="coerce")
    no_final = int(sum(1 for t in checks["trial"].unique() if t not in final.index or not np.isfinite(final[t])))
    out = []
    for metric in metrics:
        for f in fractions:
            pairs = early_pairs(trials, checks, metric, f, target)
            rho, lo, hi = spearman_ci(pairs["early"], pairs["final"], n_boot, level, seed, clusters=pairs["run"])
            out.append({"metric": metric, "fraction": f, "target": target, "n": len(pairs),
                        "n_runs": pairs["run"].nunique(), "spearman": rho, "lo": lo, "hi": hi,
                        "at_min": pairs["at"].min(), "at_max": pairs["at"].max(), "no_final": no_final})  # fmt: skip
    return pd.DataFrame(out)


def _is_signal(column: str) -> bool:
    """A checked value, not bookkeeping (the trial, the step, how long the check took)."""
    return column not in ("trial", "step") and not column.endswith("_time_s")


def early_pairs(trials: pd.DataFrame, checks: pd.DataFrame, metric: str, fraction: float,
                target: str = "asr") -> pd.DataFrame:  # fmt: skip
    """Per trial with a finite final `target`: its last check at step ≤ fraction·steps (columns trial, early =
    that check's `metric`, final, at = the check's step / steps, run = the trial's run_dir, or the trial itself
    without one); trials with no check that early, or no `metric` value at it, are left out."""
    final = pd.to_numeric(trials[target], errors="coerce")
    steps = pd.to_numeric(trials["steps"], errors="coerce")
    runs = trials["run_dir"] if "run_dir" in trials.columns else pd.Series(trials.index, index=trials.index)
    rows = []
    for trial, group in checks.groupby("trial"):
        if trial not in final.index or not np.isfinite(final[trial]) or not np.isfinite(steps[trial]):
            continue
        early = group[group["step"] <= fraction * steps[trial]].sort_values("step", kind="stable")
        if not len(early) or metric not in early:
            continue
        last = early.iloc[-1]  # never an earlier check standing in for a missing value at the last one
        value = pd.to_numeric(pd.Series([last[metric]]), errors="coerce").iloc[0]
        if np.isfinite(value):
            run = runs.get(trial)
            rows.append({"trial": trial, "early": float(value), "final": float(final[trial]),
                         "at": float(last["step"]) / float(steps[trial]),
                         "run": str(run) if isinstance(run, str | Path) else f"trial {trial}"})  # fmt: skip
    return pd.DataFrame(rows, columns=["trial", "early", "final", "at", "run"])
