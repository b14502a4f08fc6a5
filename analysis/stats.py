"""Seeds → recipes (mean, std, t-interval) and bootstrap intervals for ASR from per-prompt verdicts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from analysis.load import RECIPE, param_columns
from analysis.pareto import Objective, eligible
from sweeps.stats import mean_ci

# Columns that vary between repeats of one recipe, never part of its identity.
NOT_RECIPE = {"seed", "trial", "run_dir", "state", "source", "eval_weights"}
# a recipe's run dirs and, run by run, the weights behind its metrics (generations.jsonl's tag; None: the run's own)
RUN_LISTS = ["run_dirs", "run_weights"]

__all__ = ["aggregate_seeds", "asr_bootstrap", "bootstrap_mean", "harmful_verdicts", "mean_ci", "recipe_columns",
           "run_verdicts"]  # mean_ci: sweeps.stats, the one interval of the project


def recipe_columns(df: pd.DataFrame) -> list[str]:
    """What identifies a recipe: study, method, the recipe columns and every swept parameter except the seed."""
    keys = ["study", "method", "shadow", *RECIPE, *param_columns(df)]  # shadow: an eval.each_shadow EMA's name
    return [c for c in dict.fromkeys(keys) if c in df.columns and c not in NOT_RECIPE]


def aggregate_seeds(df: pd.DataFrame, objectives: Sequence[Objective], metrics: Sequence[str] = (),
                    level: float = 0.95) -> pd.DataFrame:  # fmt: skip
    """One row per recipe over its eligible trials (seeds): each metric's mean under its own name, plus
    `<metric>_std`, `<metric>_ci_lo`, `<metric>_ci_hi`, `n_seeds`, `trials` ("0,4,9") and `run_dirs` (list).

    The result keeps `state` = COMPLETE and a recomputed `feasible` (every constraint's mean ≤ 0), so the Pareto
    functions apply to it unchanged: a front over recipe means.
    """
    keys = recipe_columns(df)
    ok = df[eligible(df, objectives)]
    cols = list(dict.fromkeys([o.column for o in objectives] + [m for m in metrics if m in df.columns]))
    constraints = [c for c in df.columns if c.startswith("constraint/")]
    rows = []
    for key, g in ok.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        for c in cols:
            mean, std, lo, hi, _ = mean_ci(pd.to_numeric(g[c], errors="coerce"), level)
            row.update({c: mean, f"{c}_std": std, f"{c}_ci_lo": lo, f"{c}_ci_hi": hi})
        for c in constraints:
            row[c] = pd.to_numeric(g[c], errors="coerce").mean()
        weights = g["eval_weights"] if "eval_weights" in g else pd.Series(None, index=g.index, dtype=object)
        with_dir = [(d, w if isinstance(w, str) else None) for d, w in zip(g["run_dir"], weights, strict=True)
                    if isinstance(d, str)]  # fmt: skip
        row.update(n_seeds=len(g), trials=",".join(str(t) for t in g["trial"]), state="COMPLETE",
                   run_dirs=[d for d, _ in with_dir], run_weights=[w for _, w in with_dir])  # fmt: skip
        if "seed" in g:
            row["seeds"] = ",".join(str(s) for s in g["seed"].dropna().tolist())
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out) == 0:
        return pd.DataFrame(columns=[*keys, *cols, "n_seeds", "trials", "state", *RUN_LISTS, "feasible"])
    if constraints:
        has = out[constraints].notna()
        out["feasible"] = ((out[constraints] <= 0) | ~has).all(axis=1) & (has.any(axis=1) | ~has.any().any())
    else:
        out["feasible"] = True
    out.attrs = {**df.attrs}
    return out


def harmful_verdicts(run_dir: str | Path) -> np.ndarray | None:
    """The attack_success verdicts (0/1) of the evaluated weights in a run dir's generations.jsonl, or None."""
    return run_verdicts(run_dir, {"harmful": "attack_success"})["harmful"]


def run_verdicts(run_dir: str | Path, fields: Mapping[str, str],
                 weights: str | None = None) -> dict[str, np.ndarray | None]:
    """Per eval set in `fields` (set → verdict field, e.g. harmful: attack_success, overrefusal: refused, utility:
    correct), one 0/1 verdict per prompt for the evaluated weights, read in one pass over generations.jsonl; None
    for a set the file lacks.

    A run may hold rows for several weights ("start" with eval.baseline, "live" with eval.also_live); the ones
    behind the run's metrics are metrics.json's `eval_weights`, else the first weights that are not "start";
    `weights` picks others (e.g. "interp/0.5", the rows of eval.interpolate).
    """
    out: dict[str, np.ndarray | None] = dict.fromkeys(fields)
    path = Path(run_dir) / "generations.jsonl"
    if not path.is_file():
        return out
    wanted = weights
    metrics = Path(run_dir) / "metrics.json"
    if wanted is None and metrics.is_file():
        try:
            wanted = json.loads(metrics.read_text()).get("eval_weights")
        except json.JSONDecodeError:
            wanted = None
    verdicts: dict[str, dict[str, list[bool]]] = {name: {} for name in fields}  # set → weights → verdicts
    first: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            name = row.get("set")
            if name not in fields or fields[name] not in row:
                continue
            w = row.get("weights", "live")
            if w != "start":
                first.setdefault(name, w)
            verdicts[name].setdefault(w, []).append(bool(row[fields[name]]))
    for name, by_weights in verdicts.items():
        chosen = wanted if wanted in by_weights else first.get(name)
        out[name] = np.asarray(by_weights[chosen], dtype=float) if chosen in by_weights else None
    return out


def bootstrap_mean(samples: Sequence[np.ndarray], n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """(mean, lo, hi): percentile bootstrap of the mean over runs of each run's mean; prompts are resampled within
    each run (stratified), so the interval is the prompt-sampling uncertainty of a recipe's (seed-averaged) ASR."""
    rng = np.random.default_rng(seed)
    samples = [np.asarray(s, float) for s in samples if len(s)]
    if not samples:
        return np.nan, np.nan, np.nan
    if n_boot < 1:  # no resamples asked for: the mean, no interval
        return float(np.mean([s.mean() for s in samples])), np.nan, np.nan
    boot = np.zeros(n_boot)
    for s in samples:
        boot += s[rng.integers(0, len(s), size=(n_boot, len(s)))].mean(axis=1)
    boot /= len(samples)
    mean = float(np.mean([s.mean() for s in samples]))
    lo, hi = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2])
    return mean, float(lo), float(hi)


def asr_bootstrap(rows: pd.DataFrame, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                  progress: bool = False) -> pd.DataFrame:  # fmt: skip
    """`asr_boot`, `asr_boot_lo`, `asr_boot_hi` and `asr_prompts` for each row, from its run dir(s)' verdicts.

    rows: trials (columns run_dir, eval_weights) or recipes (columns run_dirs, run_weights); the verdicts are those of
    the weights behind each run's row (an eval.each_shadow EMA's own). NaN where no generations.jsonl is found.
    """
    out = rows.copy()
    cols = {"asr_boot": [], "asr_boot_lo": [], "asr_boot_hi": [], "asr_prompts": []}
    none = pd.Series([None] * len(out), index=out.index, dtype=object)
    dirs = out["run_dirs"] if "run_dirs" in out else out.get("run_dir", none)
    tags = out["run_weights"] if "run_weights" in out else out.get("eval_weights", none)
    for d, w in tqdm(list(zip(dirs, tags, strict=True)), desc="bootstrap ASR",
                     disable=not progress or len(out) < 20, leave=False):  # fmt: skip
        pairs = zip(d, w if isinstance(w, list) else [None] * len(d), strict=True) if isinstance(d, list) else [(d, w)]
        runs = [(x, t if isinstance(t, str) else None) for x, t in pairs if isinstance(x, str)]
        verdicts = [v for v in (run_verdicts(r, {"harmful": "attack_success"}, t)["harmful"] for r, t in runs)
                    if v is not None]  # fmt: skip
        mean, lo, hi = bootstrap_mean(verdicts, n_boot, level, seed)
        for k, v in zip(cols, (mean, lo, hi, sum(len(v) for v in verdicts)), strict=True):
            cols[k].append(v)
    for k, v in cols.items():
        out[k] = v
    return out
