"""Pareto front, hypervolume and hypervolume history on 10⁴ and 10⁵ synthetic trials: time, and how it grows.

    .venv/bin/python bench/bench_analysis.py [--sizes 10000 100000] [--repeats 3] [--brute-max 10000]
        [--worst-max 10000]

Data, with two and three objectives (ASR↓, utility↑, over-refusal↓):
- `random`: independent uniform objectives, 5 % failed trials (NaN) — a small front (≈ ln n points in 2-D);
- `tradeoff`: utility rises with ASR as along a learning-rate sweep, plus noise — a larger front;
- `worst`: every trial on one curve, so every trial is on the front (up to --worst-max trials).
Columns: `front_ms` = on_front() on the trial DataFrame (eligibility checks included), `core_ms` = moocore's
non-dominated sort on the bare array, `hv_ms` = hypervolume of the front, `history_s` = hypervolume_history() over
all trials, `brute_s` = an O(n²) NumPy front for reference (up to --brute-max; must agree). Median of --repeats.
Prints a table, the growth between consecutive sizes, then one line `JSON {...}`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `analysis` importable

from analysis.pareto import (
    DEFAULT_OBJECTIVES,
    Objective,
    hypervolume,
    hypervolume_history,
    on_front,
    pareto_mask,
    values,
)

THREE = [*DEFAULT_OBJECTIVES, Objective("over_refusal", "minimize")]


def trials(n: int, kind: str, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    if kind == "random":
        asr, util, over = x, rng.random(n), rng.random(n)
    elif kind == "tradeoff":
        asr = np.clip(x + rng.normal(0, 0.05, n), 0, 1)
        util = np.clip(np.sqrt(x) + rng.normal(0, 0.05, n), 0, 1)
        over = np.clip(0.3 * (1 - x) + rng.normal(0, 0.05, n), 0, 1)
    else:  # worst: utility strictly increasing in ASR, over-refusal decreasing — nothing dominates anything
        asr, util, over = x, np.sqrt(x), 1 - x
    df = pd.DataFrame({"study": "bench", "trial": np.arange(n), "state": "COMPLETE", "asr": asr, "utility_acc": util,
                       "over_refusal": over})  # fmt: skip
    if kind != "worst":
        failed = rng.random(n) < 0.05
        df.loc[failed, "state"] = "FAIL"
        df.loc[failed, ["asr", "utility_acc"]] = np.nan
    return df


def brute_force(points: np.ndarray, maximize: list[bool], chunk: int = 1024) -> np.ndarray:
    """Non-dominated rows by direct comparison of every pair, in chunks (O(n²) time, O(chunk · n) memory)."""
    x = np.where(maximize, -points, points)
    out = np.empty(len(x), dtype=bool)
    for s in range(0, len(x), chunk):
        block = x[s : s + chunk]
        le = (x[None, :, :] <= block[:, None, :]).all(axis=2)
        lt = (x[None, :, :] < block[:, None, :]).any(axis=2)
        out[s : s + chunk] = ~(le & lt).any(axis=1)
    return out


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--brute-max", type=int, default=10_000, help="largest n for the O(n²) reference front")
    ap.add_argument("--worst-max", type=int, default=10_000, help="largest n for the all-on-the-front data")
    args = ap.parse_args()

    rows = []
    for kind in ("random", "tradeoff", "worst"):
        for objectives in (list(DEFAULT_OBJECTIVES), THREE):
            m, maximize = len(objectives), [o.maximize for o in objectives]
            for n in args.sizes:
                if kind == "worst" and n > args.worst_max:
                    continue
                df = trials(n, kind)
                ref = [1.0, 0.0, 1.0][:m]
                t_front, mask = timed(lambda df=df, o=objectives: on_front(df, o), args.repeats)
                ok = df["state"].eq("COMPLETE").to_numpy()
                pts = df.loc[ok, [o.column for o in objectives]].to_numpy(float)
                t_core, _ = timed(lambda p=pts, mx=maximize: pareto_mask(p, mx), args.repeats)
                front = values(df[mask.to_numpy()], objectives)
                t_hv, hv = timed(lambda f=front, o=objectives, r=ref: hypervolume(f, o, r), args.repeats)
                t_hist, hist = timed(lambda df=df, o=objectives, r=ref: hypervolume_history(df, o, r), args.repeats)
                assert math.isclose(hist["hypervolume"].iloc[-1], hv, rel_tol=1e-9)
                row = {"data": kind, "m": m, "n": n, "front": int(mask.sum()), "front_ms": 1e3 * t_front,
                       "core_ms": 1e3 * t_core, "hv_ms": 1e3 * t_hv, "history_s": t_hist, "brute_s": None}  # fmt: skip
                if n <= args.brute_max:
                    t_brute, brute = timed(lambda p=pts, mx=maximize: brute_force(p, mx), 1)
                    assert (brute == mask.to_numpy()[ok]).all(), "moocore front differs from brute force"
                    row["brute_s"] = t_brute
                rows.append(row)
                print(f"  {kind:8s} m={m} n={n:>7,}: front {row['front']:>6} in {row['front_ms']:8.1f} ms, "
                      f"HV {row['hv_ms']:7.2f} ms, history {t_hist:7.2f} s", flush=True)  # fmt: skip

    table = pd.DataFrame(rows)
    growth = []
    for (kind, m), g in table.groupby(["data", "m"], sort=False):
        g = g.sort_values("n")
        for (_, a), (_, b) in zip(g.iloc[:-1].iterrows(), g.iloc[1:].iterrows(), strict=True):  # consecutive sizes
            k = math.log(b["n"] / a["n"])
            entry = {"data": kind, "m": m, "n": f"{a['n']:,} → {b['n']:,}"}
            for col in ("front_ms", "core_ms", "history_s"):
                entry[f"{col} ×"] = b[col] / a[col]
                entry[f"{col} b"] = math.log(b[col] / a[col]) / k
            growth.append(entry)
    show = table.assign(brute_s=table["brute_s"].map(lambda v: "-" if v is None or pd.isna(v) else f"{v:.2f}"))
    print("\n" + show.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if growth:
        print("\ngrowth between consecutive sizes (×: time ratio; b: exponent in time ∝ n^b):")
        print(pd.DataFrame(growth).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("JSON " + json.dumps({"rows": rows, "growth": growth}, default=float))


if __name__ == "__main__":
    main()
