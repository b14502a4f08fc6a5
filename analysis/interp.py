"""Post-hoc interpolation rows: θ(α) = θ_aligned + α·(θ_evaluated − θ_aligned), scored by a trial run with
`eval.interpolate=[...]` (metrics.json keys `interp/<α>/<metric>`), as recipe-like rows for the Pareto figure."""

from __future__ import annotations

import re

import pandas as pd

__all__ = ["interpolation_rows"]

_KEY = re.compile(r"^interp/([^/]+)/(.+)$")


def interpolation_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, α): the trial's row with its metrics replaced by the α point's, `alpha` set, `method`
    suffixed " α=<α>" and `interpolated` True; the trial rows themselves are not included (concat them if wanted)."""
    by_alpha: dict[str, dict[str, str]] = {}
    for col in df.columns:
        if m := _KEY.match(str(col)):
            by_alpha.setdefault(m.group(1), {})[col] = m.group(2)
    if not by_alpha:
        return df.iloc[0:0].assign(alpha=pd.Series(dtype=float), interpolated=pd.Series(dtype=bool))
    interp_cols = [c for cols in by_alpha.values() for c in cols]
    base = df.drop(columns=interp_cols)
    parts = []
    for alpha, cols in sorted(by_alpha.items(), key=lambda kv: float(kv[0])):
        rows = base.copy()
        for col, metric in cols.items():
            rows[metric] = df[col]
        rows = rows[df[list(cols)].notna().any(axis=1)]
        rows["alpha"] = float(alpha)
        rows["interpolated"] = True
        if "method" in rows.columns:
            rows["method"] = rows["method"].astype(str) + f" α={alpha}"
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)
