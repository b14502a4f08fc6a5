"""Early signals (analysis.early): Spearman ρ between early check values and final ASR, on synthetic tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from analysis.early import early_signals, load_checks, spearman_ci
from analysis.errors import AnalysisError


def _synthetic(n: int = 12, steps: int = 100):
    """Trial i: final ASR i/n; safety_loss at each check decreases with i (a perfect inverse early signal); noise
    unrelated to it; by step 20 (inside 25 %) a perfect positive signal `late` appears that is absent before."""
    rng = np.random.default_rng(1)
    trials = pd.DataFrame({"steps": [steps] * n, "asr": [i / n for i in range(n)]})
    rows = []
    for i in range(n):
        for step in range(10, steps + 1, 10):
            rows.append({"trial": i, "step": step, "safety_loss": 5.0 - i + step / 1000, "noise": rng.normal(),
                         "late": float(i) if step >= 20 else 0.0, "eval_time_s": 0.1 * i})  # fmt: skip
    return trials, pd.DataFrame(rows)


def test_rank_correlation_of_early_values_with_final_asr() -> None:
    trials, checks = _synthetic()
    out = early_signals(trials, checks, fractions=(0.1, 0.25), n_boot=300).set_index(["metric", "fraction"])
    assert set(out.index.get_level_values("metric")) == {"safety_loss", "noise", "late"}  # timings are no signal
    assert out.loc[("safety_loss", 0.1), "spearman"] == pytest.approx(-1.0)
    assert out.loc[("safety_loss", 0.1), "hi"] == pytest.approx(-1.0)  # every resample is also perfectly ranked
    assert np.isnan(out.loc[("late", 0.1), "spearman"])  # constant at 10 %: ρ undefined
    assert out.loc[("late", 0.25), "spearman"] == pytest.approx(1.0)
    noise = out.loc[("noise", 0.1)]
    x = checks[checks.step == 10].sort_values("trial")["noise"]
    assert noise["spearman"] == pytest.approx(spearmanr(x, trials["asr"]).statistic)
    assert noise["lo"] < noise["spearman"] < noise["hi"] and noise["n"] == 12


def test_early_value_is_the_last_check_within_the_fraction_and_trials_without_one_drop_out() -> None:
    trials = pd.DataFrame({"steps": [100, 100, 100, 40], "asr": [0.1, 0.2, 0.3, 0.9]})
    checks = pd.DataFrame({"trial": [0, 0, 1, 1, 2, 3], "step": [5, 20, 10, 30, 50, 4],
                           "m": [9.0, 1.0, 2.0, 0.0, 3.0, 4.0]})  # fmt: skip
    out = early_signals(trials, checks, metrics=["m"], fractions=(0.25,), n_boot=50).iloc[0]
    # trial 0 → step 20 (1.0), trial 1 → step 10 (2.0), trial 2 has no check by step 25, trial 3 → step 4 of 40
    assert out["n"] == 3
    assert out["spearman"] == pytest.approx(spearmanr([1.0, 2.0, 4.0], [0.1, 0.2, 0.9]).statistic)


def test_checks_are_read_from_run_dirs_and_bad_input_names_the_problem(tmp_path) -> None:
    dirs = []
    for i in range(2):
        d = tmp_path / str(i)
        d.mkdir()
        (d / "checks.jsonl").write_text("".join(json.dumps({"step": s, "distance_l2": s * (i + 1)}) + "\n"
                                                for s in (2, 4)))  # fmt: skip
        dirs.append(str(d))
    checks = load_checks(pd.DataFrame({"run_dir": [*dirs, None]}))
    assert list(checks["trial"]) == [0, 0, 1, 1] and list(checks["distance_l2"]) == [2, 4, 4, 8]
    assert np.isnan(spearman_ci([1, 2], [1, 2])).all()  # too few pairs
    with pytest.raises(AnalysisError, match="no column 'asr'"):
        early_signals(pd.DataFrame({"steps": [4]}), checks)
    with pytest.raises(AnalysisError, match=r"trial\.check_every"):
        early_signals(pd.DataFrame({"steps": [4], "asr": [0.1], "run_dir": [None]}))
    (tmp_path / "0" / "checks.jsonl").write_text("{oops\n")
    with pytest.raises(AnalysisError, match=r"checks.jsonl:1"):
        load_checks(pd.DataFrame({"run_dir": dirs}))


def test_interpolation_rows_replace_metrics_by_each_alpha_point() -> None:
    from analysis.interp import interpolation_rows

    df = pd.DataFrame({"method": ["SFT", "EMA η=0.25"], "lr": [1e-3, 1e-4], "asr": [0.8, 0.6],
                       "utility_loss": [1.0, 1.2],
                       "interp/0.5/asr": [0.3, None], "interp/0.5/utility_loss": [1.5, None],
                       "interp/0.25/asr": [0.1, 0.05], "interp/0.25/utility_loss": [2.0, 2.1]})  # fmt: skip
    out = interpolation_rows(df)
    assert list(out["alpha"]) == [0.25, 0.25, 0.5]  # trial 1 has no α = 0.5 point
    assert list(out["method"]) == ["SFT α=0.25", "EMA η=0.25 α=0.25", "SFT α=0.5"]
    assert list(out["asr"]) == [0.1, 0.05, 0.3] and list(out["utility_loss"]) == [2.0, 2.1, 1.5]
    assert list(out["lr"]) == [1e-3, 1e-4, 1e-3] and out["interpolated"].all()
    assert not any(c.startswith("interp/") for c in out.columns)
    assert interpolation_rows(df[["method", "asr"]]).empty


def test_rows_of_one_run_are_resampled_together_and_shadows_do_not_inherit_the_live_loss(tmp_path) -> None:
    """Twelve EMAs of one run are not twelve trials: the interval resamples runs, n_runs says how many; a shadow's
    checks carry its own values, never the live weights' training loss."""
    rng = np.random.default_rng(0)
    run_level = rng.normal(size=8)
    x = np.repeat(run_level, 5) + rng.normal(scale=0.05, size=40)
    y = np.repeat(run_level + rng.normal(scale=1.0, size=8), 5)
    runs = np.repeat(np.arange(8), 5)
    rho, lo, hi = spearman_ci(x, y, n_boot=500, clusters=runs)
    rho_rows, lo_rows, hi_rows = spearman_ci(x, y, n_boot=500)
    assert rho == rho_rows and hi - lo > 1.3 * (hi_rows - lo_rows)  # 8 runs, not 40 rows: a wider interval
    with_nan = spearman_ci([*x, np.nan], [*y, 0.5], n_boot=500, clusters=[*runs, 99])
    assert with_nan == (rho, lo, hi)  # a non-finite pair is dropped before ranking and resampling
    two_runs = spearman_ci(x, y, n_boot=500, clusters=runs % 2)
    assert two_runs[0] == rho and np.isnan(two_runs[1:]).all()  # two runs: no interval, not a fake narrow one

    run = tmp_path / "run"
    run.mkdir()
    (run / "checks.jsonl").write_text(json.dumps({"step": 5, "loss": 9.0, "safety_loss": 1.0,
                                                  "shadow/ema/safety_loss": 2.0}) + "\n")  # fmt: skip
    trials = pd.DataFrame({"run_dir": [str(run), str(run)], "shadow": [None, "ema"], "steps": [10, 10],
                           "asr": [0.5, 0.2]})  # fmt: skip
    checks = load_checks(trials).set_index("trial")
    assert checks.loc[0, "loss"] == 9.0 and np.isnan(checks.loc[1, "loss"])
    assert list(checks["safety_loss"]) == [1.0, 2.0]
    out = early_signals(trials, fractions=(0.5,), n_boot=10).set_index("metric")
    assert out.loc["safety_loss", "n"] == 2 and out.loc["safety_loss", "n_runs"] == 1
    assert out.loc["loss", "n"] == 1


def test_the_check_actually_used_and_trials_without_a_final_asr_are_reported() -> None:
    """`at_min`/`at_max`: the fractions of the run the used checks sit at; a missing value at the last check by f
    drops the trial rather than letting an earlier check stand in; checked trials without a final ASR are counted."""
    trials = pd.DataFrame({"steps": [38, 38, 38, 40, 38], "asr": [0.1, 0.5, 0.9, 0.3, np.nan]})
    checks = pd.DataFrame({"trial": [0, 0, 1, 2, 3, 3, 4], "step": [5, 9, 9, 9, 5, 10, 9],
                           "m": [7.0, 1.0, 2.0, 3.0, 0.5, np.nan, 4.0]})  # fmt: skip
    out = early_signals(trials, checks, metrics=["m"], fractions=(0.25,), n_boot=50).iloc[0]
    assert out["n"] == 3  # trial 3's value at step 10 is missing: not replaced by its step-5 value
    assert out["at_min"] == out["at_max"] == pytest.approx(9 / 38)
    assert out["no_final"] == 1
    assert out["spearman"] == pytest.approx(1.0)
