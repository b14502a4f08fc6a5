"""analysis: loading, Pareto fronts, hypervolume, comparisons, statistics, tables, figures, report, CLI errors.

Synthetic DataFrames and studies throughout; test_analysis_sweep.py loads one real toy sweep.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats as sps

from analysis import figures, tables
from analysis.cli import main
from analysis.errors import AnalysisError
from analysis.load import add_constraints, load, method_label
from analysis.pareto import (
    DEFAULT_OBJECTIVES,
    Objective,
    compare,
    eligible,
    hypervolume,
    hypervolume_history,
    on_front,
    pareto_front,
    parse_objectives,
    reference_point,
    values,
)
from analysis.report import ReportOptions, write_report
from analysis.stats import aggregate_seeds, asr_bootstrap, bootstrap_mean, harmful_verdicts, mean_ci
from tests.conftest import PYTHON, ROOT

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
ASR_UTIL = list(DEFAULT_OBJECTIVES)


def brute_force_front(points: np.ndarray, maximize: list[bool], usable: np.ndarray) -> np.ndarray:
    """O(n²) definition: usable and no usable point is ≥ as good everywhere and strictly better somewhere."""
    x = np.where(maximize, -points, points)
    out = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(usable):
        others = x[usable]
        dominated = ((others <= x[i]).all(axis=1) & (others < x[i]).any(axis=1)).any()
        out[i] = not dominated
    return out


def synthetic_trials(n: int = 60, seed: int = 0, seeds_per_recipe: int = 1, runs: Path | None = None) -> pd.DataFrame:
    """A frame shaped like analysis.load's: SFT and EMA recipes over lr × batch, optional run dirs with verdicts."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        recipe = i // seeds_per_recipe
        r = np.random.default_rng(1000 + recipe)
        lr = float(10 ** r.uniform(-4, -2.5))
        batch, accum, eta = int(r.choice([2, 4, 8, 16])), int(r.choice([1, 2])), float(r.choice([1.0, 0.5, 0.25]))
        asr = float(np.clip(0.3 * np.log10(lr / 1e-4) + rng.normal(0, 0.05) - 0.1 * (eta < 1), 0, 1))
        util = float(np.clip(0.5 + 0.3 * np.log10(lr / 1e-4) + rng.normal(0, 0.05), 0, 1))
        row = {"source": "synthetic", "study": "s", "trial": i, "state": "COMPLETE", "method": method_label(eta),
               "seed": i % seeds_per_recipe, "lr": lr, "batch_size": batch, "grad_accum": accum,
               "effective_batch_size": batch * accum, "eta": eta, "optim.lr": lr, "optim.batch_size": batch,
               "optim.grad_accum": accum, "method.ema.eta": eta, "asr": asr, "utility_acc": util,
               "over_refusal": float(rng.uniform(0, 0.2)), "status": "completed", "run_dir": None}  # fmt: skip
        if runs is not None:
            row["run_dir"] = str(_fake_run(runs / str(i), asr_rate=asr, rng=rng))
        rows.append(row)
    df = pd.DataFrame(rows)
    df["constraint/asr<=0.3"] = df["asr"] - 0.3
    df["feasible"] = df["constraint/asr<=0.3"] <= 0
    df.attrs["params"] = ["method.ema.eta", "optim.batch_size", "optim.grad_accum", "optim.lr"]
    return df


def _fake_run(run_dir: Path, asr_rate: float, rng: np.random.Generator, n: int = 40) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    k = round(asr_rate * n)
    rows = [{"set": "harmful", "index": j, "attack_success": False, "weights": "start"} for j in range(n)]
    rows += [{"set": "harmful", "index": j, "attack_success": j < k, "weights": "live"} for j in range(n)]
    rows += [{"set": "utility", "index": 0, "correct": True, "weights": "live"}]
    (run_dir / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "asr": k / n, "eval_weights": "live"}))
    return run_dir


# ---------------------------------------------------------------------------------------------------------------
# Pareto front


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("objectives", [ASR_UTIL, [Objective("a", "minimize"), Objective("b", "minimize")],
                                        [Objective("a", "maximize"), Objective("b", "minimize"),
                                         Objective("c", "maximize")]])  # fmt: skip
def test_front_equals_brute_force_with_ties_duplicates_nan_and_failures(seed, objectives) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    # a coarse grid makes ties and exact duplicates common
    df = pd.DataFrame({o.column: rng.integers(0, 8, n) / 8 for o in objectives})
    df.loc[rng.choice(n, 10, replace=False), objectives[0].column] = np.nan
    df.loc[rng.choice(n, 5, replace=False), objectives[-1].column] = np.inf
    df["state"] = rng.choice(["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "PRUNED"], n)
    df["infeasible"] = rng.random(n) < 0.05  # failures recorded as COMPLETE with the worst values
    df["feasible"] = rng.random(n) < 0.7
    pts = df[[o.column for o in objectives]].to_numpy(float)
    usable = (df["state"] == "COMPLETE").to_numpy() & ~df["infeasible"].to_numpy() & np.isfinite(pts).all(axis=1)
    maximize = [o.maximize for o in objectives]
    assert (on_front(df, objectives).to_numpy() == brute_force_front(pts, maximize, usable)).all()
    usable_feasible = usable & df["feasible"].to_numpy()
    got = on_front(df, objectives, feasible_only=True).to_numpy()
    assert (got == brute_force_front(pts, maximize, usable_feasible)).all()
    # every duplicate of a front point is on the front too
    front = pareto_front(df, objectives)
    key = [o.column for o in objectives]
    dup = df[usable].merge(front[key].drop_duplicates(), on=key)
    assert len(dup) == len(front)


def test_front_is_sorted_and_empty_inputs_are_fine() -> None:
    df = pd.DataFrame({"asr": [0.5, 0.1, 0.9, np.nan], "utility_acc": [0.9, 0.4, 1.0, 1.0], "state": "COMPLETE"})
    front = pareto_front(df, ASR_UTIL)
    assert front["asr"].tolist() == [0.1, 0.5, 0.9]
    assert len(pareto_front(df.iloc[:0], ASR_UTIL)) == 0
    assert hypervolume(np.empty((0, 2)), ASR_UTIL, [1, 0]) == 0.0


def test_parse_objectives_and_unknown_column() -> None:
    assert parse_objectives("asr:min,utility_acc:max") == ASR_UTIL
    assert parse_objectives(["over_refusal:minimize"]) == [Objective("over_refusal", "minimize")]
    for bad in ("asr", "asr:up", "asr:min,asr:max", ""):
        with pytest.raises(AnalysisError):
            parse_objectives(bad)
    df = pd.DataFrame({"asr": [0.1], "utility_acc": [0.5], "state": "COMPLETE"})
    with pytest.raises(AnalysisError, match="unknown objective column 'utility'"):
        on_front(df, [Objective("utility", "maximize")])


# ---------------------------------------------------------------------------------------------------------------
# hypervolume


def test_hypervolume_hand_computed() -> None:
    # ASR↓, utility↑ against (1, 0): boxes 0.8 × 0.8 and 0.5 × 0.9 overlap in 0.5 × 0.8 → 0.64 + 0.45 − 0.40
    pts = np.array([[0.2, 0.8], [0.5, 0.9]])
    assert hypervolume(pts, ASR_UTIL, [1, 0]) == pytest.approx(0.69)
    # a dominated point and a point outside the reference box add nothing
    more = np.vstack([pts, [[0.6, 0.7], [1.5, 1.0]]])
    assert hypervolume(more, ASR_UTIL, [1, 0]) == pytest.approx(0.69)
    # three objectives, all minimised: two 1 × 0.5 × 0.5 boxes sharing a 0.5 × 0.5 × 0.5 cube
    three = [Objective(c) for c in "abc"]
    assert hypervolume(np.array([[0, 0.5, 0.5], [0.5, 0, 0.5]]), three, [1, 1, 1]) == pytest.approx(0.375)
    df = pd.DataFrame({"asr": [0.2, 0.5], "utility_acc": [0.8, 0.9], "over_refusal": [0.1, 0.1], "state": "COMPLETE"})
    assert reference_point(df, ASR_UTIL).tolist() == [1.0, 0.0]  # rates: their worst value
    assert reference_point(df.rename(columns={"asr": "loss"}), [Objective("loss"), ASR_UTIL[1]]).tolist() == [0.5, 0]


def test_hypervolume_history_equals_recomputing_every_prefix() -> None:
    rng = np.random.default_rng(3)
    n = 200
    df = pd.DataFrame({"study": rng.choice(["a", "b"], n), "trial": np.arange(n), "asr": rng.random(n).round(2),
                       "utility_acc": rng.random(n).round(2),
                       "state": rng.choice(["COMPLETE"] * 9 + ["FAIL"], n)})  # fmt: skip
    df.loc[rng.choice(n, 5), "asr"] = np.nan
    hist = hypervolume_history(df, ASR_UTIL, [1, 0])
    for study, sub in df.groupby("study"):
        got = hist[hist["study"] == study]["hypervolume"].to_numpy()
        ok = ((sub["state"] == "COMPLETE") & sub["asr"].notna()).to_numpy()
        pts = values(sub, ASR_UTIL)
        want = [hypervolume(pts[: k + 1][ok[: k + 1]], ASR_UTIL, [1, 0]) for k in range(len(sub))]
        assert got == pytest.approx(want)
        assert (np.diff(got) >= -1e-12).all()


# ---------------------------------------------------------------------------------------------------------------
# several studies or methods


def test_compare_two_methods_dominance_summary() -> None:
    df = pd.DataFrame({
        "method": ["SFT"] * 3 + ["EMA η=0.25"] * 3,
        "asr": [0.1, 0.3, 0.5, 0.05, 0.3, 0.6],
        "utility_acc": [0.5, 0.7, 0.9, 0.6, 0.8, 0.7],
        "state": "COMPLETE",
    })  # fmt: skip
    summary, cov = compare(df, ASR_UTIL, by="method", ref=[1, 0])
    s = summary.set_index("method")
    # EMA's front: (0.05, 0.6), (0.3, 0.8); (0.6, 0.7) is dominated by its own (0.3, 0.8)
    assert s.loc["EMA η=0.25", "front"] == 2 and s.loc["SFT", "front"] == 3
    assert s.loc["EMA η=0.25", "hypervolume"] == pytest.approx(0.95 * 0.6 + 0.7 * 0.2)
    assert s.loc["SFT", "hypervolume"] == pytest.approx(0.9 * 0.5 + 0.7 * 0.2 + 0.5 * 0.2)
    # EMA's (0.05, 0.6) beats SFT's (0.1, 0.5); EMA's (0.3, 0.8) beats SFT's (0.3, 0.7); SFT's (0.5, 0.9) survives
    assert s.loc["SFT", "dominated_by_others"] == 2 and s.loc["EMA η=0.25", "dominated_by_others"] == 0
    assert s.loc["SFT", "on_combined_front"] == 1 and s.loc["EMA η=0.25", "on_combined_front"] == 2
    assert cov.loc["EMA η=0.25", "SFT"] == pytest.approx(2 / 3) and cov.loc["SFT", "EMA η=0.25"] == 0.0
    assert summary.attrs["ref"] == [1.0, 0.0]


def test_compare_studies_from_two_storages(tmp_path) -> None:
    for name, shift in (("sft", 0.0), ("ema", -0.1)):
        _journal_study(tmp_path / name / "optuna.journal", name, [
            ({"optim.lr": 1e-4, "optim.batch_size": 8}, [0.3 + shift, 0.6]),
            ({"optim.lr": 1e-3, "optim.batch_size": 8}, [0.6 + shift, 0.9]),
        ])  # fmt: skip
    df = load([tmp_path / "sft", tmp_path / "ema"])
    summary, cov = compare(df, ASR_UTIL, by="study")
    assert summary.set_index("study")["dominated_by_others"].to_dict() == {"ema": 0, "sft": 2}
    assert cov.loc["ema", "sft"] == 1.0 and cov.loc["sft", "ema"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# loading


def _journal_study(path: Path, name: str, trials: list[tuple[dict, list[float] | None]],
                   constraint: bool = False) -> optuna.Study:  # fmt: skip
    from sweeps.study.storage import open_storage

    study = optuna.create_study(study_name=name, storage=open_storage(str(path)), directions=["minimize", "maximize"])
    study.set_metric_names(["asr", "utility_acc"])
    dists = {"optim.lr": FloatDistribution(1e-5, 1e-2, log=True), "optim.batch_size": CategoricalDistribution([4, 8]),
             "method.ema.eta": CategoricalDistribution([1.0, 0.25])}  # fmt: skip
    for params, vals in trials:
        attrs = {"lr": params["optim.lr"], "batch_size": params["optim.batch_size"], "grad_accum": 2, "seed": 0,
                 "worker": "w", "lease_until": 1.0, "over_refusal": 0.1}  # fmt: skip
        cons = None
        if vals is not None:
            attrs.update(status="completed", effective_batch_size=params["optim.batch_size"] * 2)
            cons = {"asr<=0.5": vals[0] - 0.5} if constraint else None
        else:
            attrs["fail_reason"] = "diverged"
        study.add_trial(create_trial(
            state=TrialState.COMPLETE if vals is not None else TrialState.FAIL, values=vals, params=params,
            distributions={k: dists[k] for k in params}, user_attrs=attrs, constraints=cons,
        ))  # fmt: skip
    return study


def test_load_storage_to_tidy_frame(tmp_path) -> None:
    path = tmp_path / "sweep" / "optuna.journal"
    _journal_study(path, "mine", [
        ({"optim.lr": 1e-3, "optim.batch_size": 8, "method.ema.eta": 1.0}, [0.4, 0.9]),
        ({"optim.lr": 1e-4, "optim.batch_size": 4, "method.ema.eta": 0.25}, [0.2, 0.7]),
        ({"optim.lr": 3e-3, "optim.batch_size": 4, "method.ema.eta": 1.0}, None),
        ({"optim.lr": 2e-3, "optim.batch_size": 4, "method.ema.eta": 1.0}, [0.9, 0.1]),
    ], constraint=True)  # fmt: skip
    _journal_study(tmp_path / "sweep" / "other.journal", "other", [({"optim.lr": 1e-3, "optim.batch_size": 8}, [0, 0])])
    (tmp_path / "sweep" / "0").mkdir()
    (tmp_path / "sweep" / "0" / "metrics.json").write_text("{}")
    df = load([tmp_path / "sweep"])  # the folder: its optuna.journal (other.journal is not a sweep's default name)
    assert df["study"].unique().tolist() == ["mine"]
    assert df["state"].tolist() == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert df["method"].tolist() == ["SFT", "EMA η=0.25", "SFT", "SFT"]
    assert df["asr"].iloc[0] == 0.4 and np.isnan(df["asr"].iloc[2])
    assert df["effective_batch_size"].tolist() == [16, 8, 8, 8]  # the failed trial's: batch × grad_accum
    assert df["feasible"].tolist() == [True, True, False, False]
    assert df["constraint/asr<=0.5"].iloc[3] == pytest.approx(0.4)
    assert df["run_dir"].iloc[0] == str(tmp_path / "sweep" / "0") and pd.isna(df["run_dir"].iloc[1])
    assert "worker" not in df and "lease_until" not in df
    assert df.attrs["params"] == ["method.ema.eta", "optim.batch_size", "optim.lr"]
    assert df.attrs["directions"] == {"asr": "minimize", "utility_acc": "maximize"}
    assert list(df.columns[:11]) == ["source", "study", "trial", "state", "method", "seed", "lr", "batch_size",
                                     "grad_accum", "effective_batch_size", "eta"]  # fmt: skip
    # a journal file and a study chosen by name; labels override the derived method
    both = load([path, tmp_path / "sweep" / "other.journal"], studies=["other"], labels={"other": "baseline"})
    assert both["method"].tolist() == ["baseline"]
    with pytest.raises(AnalysisError, match="study 'nope' not found; the sources hold: mine"):
        load([path], studies=["nope"])
    # extra budgets after the fact
    tight = add_constraints(df, ["asr<=0.3"])
    assert tight["feasible"].tolist() == [False, True, False, False]
    with pytest.raises(AnalysisError, match="no column 'x'"):
        add_constraints(df, ["x<=1"])


def test_load_sqlite_storage(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="q", storage=url, directions=["minimize", "maximize"])
    study.add_trial(create_trial(values=[0.1, 0.5], params={"optim.lr": 1e-3},
                                 distributions={"optim.lr": FloatDistribution(1e-5, 1e-2)}))  # fmt: skip
    for source in (url, tmp_path / "db.sqlite"):
        df = load([source])
        assert df["study"].tolist() == ["q"] and df["values_0"].tolist() == [0.1]  # no metric names stored


def test_load_plain_multirun_dirs(tmp_path) -> None:
    sweep = tmp_path / "multirun" / "2026-01-01_00-00-00"
    for job, (status, extra) in enumerate([("completed", {"ema/eta": 0.5}), ("diverged", {}), ("completed", {})]):
        d = sweep / str(job)
        (d / ".hydra").mkdir(parents=True)
        # `method=[...]` and `seed=0` (as the study driver writes them) name fixed columns, not new ones
        (d / ".hydra" / "overrides.yaml").write_text(f"- optim.lr={10.0 ** -(job + 2)}\n- experiment=toy_{job}\n"
                                                     "- method=[ema]\n- seed=0\n- hydra.job.chdir=false\n")  # fmt: skip
        metrics = {"status": status, "asr": 0.1 * job, "utility_acc": 0.5, "lr": 10.0 ** -(job + 2),
                   "batch_size": 8, "grad_accum": 2, "effective_batch_size": 16, "seed": 0,
                   "versions": {"torch": "x"}, **extra}  # fmt: skip
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "config.yaml").write_text("optim: {lr: 0.01}\n")
    crashed = sweep / "3"
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / "config.yaml").write_text("optim: {lr: 0.5, batch_size: 4, grad_accum: 1}\nmethod: {}\nseed: 1\n")
    df = load([tmp_path / "multirun"])
    assert df["study"].unique().tolist() == ["2026-01-01_00-00-00"]
    assert df["trial"].tolist() == [0, 1, 2, 3]
    assert df["state"].tolist() == ["COMPLETE", "FAIL", "COMPLETE", "FAIL"]
    assert df["method"].tolist() == ["EMA η=0.5", "SFT", "SFT", "SFT"]
    assert df["optim.lr"].tolist()[:3] == [0.01, 0.001, 0.0001] and df["experiment"].iloc[1] == "toy_1"
    assert df["lr"].iloc[3] == 0.5 and df["effective_batch_size"].iloc[3] == 4  # from the crashed job's config
    assert "versions" not in df and "hydra.job.chdir" not in df
    assert len(pareto_front(df, ASR_UTIL)) == 1  # the diverged and crashed jobs are not candidates
    assert df.columns.is_unique and len(aggregate_seeds(df, ASR_UTIL)) == 2


# ---------------------------------------------------------------------------------------------------------------
# statistics


def test_aggregate_seeds_mean_std_and_t_interval() -> None:
    df = synthetic_trials(n=30, seeds_per_recipe=3)
    rec = aggregate_seeds(df, ASR_UTIL, ["over_refusal"])
    assert len(rec) == 10 and (rec["n_seeds"] == 3).all()
    first = df[df["trial"].isin([0, 1, 2])]["asr"].to_numpy()
    row = rec[rec["trials"] == "0,1,2"].iloc[0]
    half = sps.t.ppf(0.975, 2) * first.std(ddof=1) / np.sqrt(3)
    assert row["asr"] == pytest.approx(first.mean()) and row["asr_std"] == pytest.approx(first.std(ddof=1))
    assert (row["asr_ci_lo"], row["asr_ci_hi"]) == pytest.approx((first.mean() - half, first.mean() + half))
    assert row["feasible"] == (first.mean() <= 0.3)
    assert mean_ci([0.5])[0] == 0.5 and np.isnan(mean_ci([0.5])[1:4]).all()  # no spread from one seed
    assert len(pareto_front(rec, ASR_UTIL)) >= 1


def test_bootstrap_asr_from_generations(tmp_path) -> None:
    rng = np.random.default_rng(0)
    run = _fake_run(tmp_path / "r", asr_rate=0.25, rng=rng, n=40)
    verdicts = harmful_verdicts(run)
    assert len(verdicts) == 40 and verdicts.mean() == 0.25  # the evaluated weights, not the "start" rows
    mean, lo, hi = bootstrap_mean([verdicts], n_boot=4000)
    assert mean == 0.25 and lo < 0.25 < hi
    assert (lo, hi) == pytest.approx((0.125, 0.375), abs=0.03)  # ≈ ± 1.96 · sqrt(p(1−p)/n)
    assert bootstrap_mean([verdicts], n_boot=500, seed=1) == bootstrap_mean([verdicts], n_boot=500, seed=1)
    none = bootstrap_mean([verdicts], n_boot=0)  # --bootstrap 0: the mean, no interval (not a crash)
    assert none[0] == 0.25 and np.isnan(none[1:]).all()
    rows = pd.DataFrame({"run_dirs": [[str(run), str(_fake_run(tmp_path / "q", 0.75, rng, 40))], [], [str(tmp_path)]]})
    out = asr_bootstrap(rows, n_boot=500)
    assert out["asr_boot"].iloc[0] == 0.5 and out["asr_prompts"].tolist() == [80, 0, 0]
    assert out["asr_boot"].iloc[1:].isna().all()


# ---------------------------------------------------------------------------------------------------------------
# tables and figures


def _check_latex(tex: str, ncols: int) -> None:
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", tex).group(1)
    assert len(spec) == ncols
    body = tex.split(r"\toprule")[1].split(r"\bottomrule")[0]
    rows = [r for r in body.replace(r"\midrule", "").split(r"\\") if r.strip()]
    for r in rows:
        assert len(re.findall(r"(?<!\\)&", r)) == ncols - 1, r
    assert not re.search(r"(?<!\\)[_%#]", tex.replace(r"\_", "").replace(r"\%", "").replace(r"\#", ""))
    assert not re.search("[^\x00-\x7f]", tex), "non-ASCII left for pdflatex"
    assert tex.count("{") == tex.count("}") + tex.count(r"\}") - tex.count(r"\{")


def test_latex_table_well_formed(tmp_path) -> None:
    rec = aggregate_seeds(synthetic_trials(n=24, seeds_per_recipe=2), ASR_UTIL, ["over_refusal"])
    rec.loc[0, "method"] = "odd_name & 50% #1"
    display = tables.recipe_display(rec, ASR_UTIL, ["over_refusal"])
    assert "±" in display["ASR ↓"].iloc[0]
    files = tables.write_table(display, rec.drop(columns="run_dirs"), tmp_path / "t", caption="η_x: 95% of a & b",
                               label="tab:t")  # fmt: skip
    tex = files[1].read_text()
    _check_latex(tex, len(display.columns))
    assert r"odd\_name \& 50\% \#1" in tex and r"$\eta$" in tex and r"$\pm$" in tex
    assert r"\caption{$\eta$\_x: 95\% of a \& b}" in tex
    assert pd.read_csv(files[0])["asr"].to_numpy() == pytest.approx(rec["asr"].to_numpy())


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_each_figure_is_written_and_non_empty(tmp_path) -> None:
    df = synthetic_trials(n=90, seeds_per_recipe=3)
    rec = aggregate_seeds(df, ASR_UTIL, ["over_refusal"])
    three = [*ASR_UTIL, Objective("over_refusal", "minimize")]
    hist = hypervolume_history(df, ASR_UTIL, [1, 0])
    written = [
        *figures.pareto_scatter(rec, ASR_UTIL, tmp_path / "p_lr", "lr"),
        *figures.pareto_scatter(rec, ASR_UTIL, tmp_path / "p_eta", "eta", feasible_only=True),
        *figures.pareto_scatter(df, three, tmp_path / "p_three", "effective_batch_size"),
        *figures.fronts_figure(rec, ASR_UTIL, tmp_path / "fronts", "method", ref=[1, 0]),
        *figures.hypervolume_figure(hist, tmp_path / "hv"),
        *figures.heatmaps(df, tmp_path / "heat", ASR_UTIL),
        *figures.metric_vs_lr(df, tmp_path / "vs_lr", ASR_UTIL),
    ]
    assert len(written) == 14
    for path in written:
        assert path.stat().st_size > 1000, path
        if path.suffix == ".png":
            assert _is_png(path)
        else:
            assert path.read_bytes()[:5] == b"%PDF-"
    assert not list(tmp_path.glob(".tmp-*"))  # written atomically: no temporary left


def test_heatmap_bins_grid_values_or_log_bins() -> None:
    grid = figures.Bins(pd.Series([1e-4, 3e-4, 1e-3, 1e-4]))
    assert grid.labels == ["1e-4", "3e-4", "1e-3"]
    assert grid.assign(pd.Series([3e-4, 2e-4, np.nan])).tolist()[0] == 1
    assert np.isnan(grid.assign(pd.Series([2e-4])).iloc[0])  # not a grid value
    cont = figures.Bins(pd.Series(10 ** np.linspace(-4, -2, 50)), max_bins=4)
    idx = cont.assign(pd.Series([1e-4, 1e-2, 1e-3]))
    assert idx.tolist() == [0, 3, 2] and len(cont.labels) == 4


@pytest.mark.parametrize("seed", range(5))
def test_tpe_like_floats_each_land_in_exactly_one_bin(seed) -> None:
    """Log-uniform floats with full precision (a TPE study's lr): the smallest and largest included."""
    v = pd.Series(10 ** np.random.default_rng(seed).uniform(-5.3, -2.1, 200))
    bins = figures.Bins(v)
    idx = bins.assign(v)
    assert idx.notna().all(), v[idx.isna()].tolist()
    assert idx.between(0, len(bins.labels) - 1).all()
    assert idx[v.idxmin()] == 0 and idx[v.idxmax()] == len(bins.labels) - 1
    assert bins.edges is not None  # every value of one bin lies between that bin's edges
    t = np.log10(v.to_numpy())
    assert ((t >= bins.edges[idx.astype(int)]) & (t <= bins.edges[idx.astype(int) + 1])).all()
    tiny = figures.Bins(pd.Series([3.1e-13, 7.7e-13, 3.1e-13 * (1 + 1e-15)]))  # grid values below 1e-12, float noise
    assert len(tiny.labels) == 2 and tiny.assign(pd.Series([3.1e-13, 7.7e-13, 3.1e-13 * (1 + 1e-15)])).tolist() \
        == [0, 1, 0]  # fmt: skip


def test_heatmap_and_vs_lr_data_hold_every_eligible_trial(tmp_path) -> None:
    df = synthetic_trials(n=120, seed=3)  # continuous lr (TPE-like): more distinct values than bins
    rng = np.random.default_rng(3)
    df["lr"] = 10 ** rng.uniform(-5.1, -2.3, len(df))
    df.loc[5, "asr"] = np.nan  # not eligible: dropped on purpose, not by the binning
    ok = int(eligible(df, ASR_UTIL).sum())
    study_bins = figures.Bins(df.loc[eligible(df, ASR_UTIL), "lr"])
    placed = 0
    for _, sub in df.groupby("method"):  # per-method heatmaps on the study's cells, as the report draws them
        rows, xb, yb = figures.binned(sub, ASR_UTIL, "lr", "effective_batch_size", bins_from=df)
        assert xb.labels == study_bins.labels and yb is not None and yb.labels == ["2", "4", "8", "16", "32"]
        assert len(rows) == int(eligible(sub, ASR_UTIL).sum()) and rows[["x_bin", "y_bin"]].notna().all().all()
        placed += len(rows)
    assert placed == ok
    rows, xb, _ = figures.binned(df, ASR_UTIL, "lr")
    assert len(rows) == ok and rows["x_bin"].notna().all()
    counts = rows.groupby("x_bin").size()
    assert counts.sum() == ok and len(counts) == len(xb.labels)
    assert figures.heatmaps(df, tmp_path / "h", ASR_UTIL) and figures.metric_vs_lr(df, tmp_path / "v", ASR_UTIL)


# ---------------------------------------------------------------------------------------------------------------
# report and CLI


def test_report_writes_every_figure_and_table_with_an_index(tmp_path) -> None:
    df = synthetic_trials(n=36, seeds_per_recipe=2, runs=tmp_path / "runs")
    index = write_report(df, tmp_path / "report", ReportOptions(n_boot=200, progress=False))
    out = index.parent
    names = {p.name for p in out.iterdir()}
    for stem in ("pareto_lr", "pareto_effective_batch_size", "pareto_eta", "fronts_by_method", "hypervolume_history",
                 "heatmap_sft", "heatmap_ema_eta_0p25", "vs_lr"):  # fmt: skip
        assert {f"{stem}.pdf", f"{stem}.png"} <= names, stem
    for table in ("trials.csv", "recipes.csv", "recipes.tex", "front.csv", "front.tex", "compare_method.csv",
                  "compare_method.tex", "coverage_method.csv", "hypervolume_history.csv", "index.md"):  # fmt: skip
        assert table in names and (out / table).stat().st_size > 0, table
    page = index.read_text()
    linked = set(re.findall(r'(?:href|src)="([^"]+)"', page))
    assert linked == {n for n in names if n not in ("index.html", "index.md")}
    front = pd.read_csv(out / "front.csv")
    assert front["asr_boot_lo"].le(front["asr_boot"]).all() and front["asr_prompts"].eq(80).all()
    _check_latex((out / "front.tex").read_text(), len(tables.recipe_display(front, ASR_UTIL,
                                                                           ["over_refusal"]).columns))  # fmt: skip


def test_cli_user_errors_are_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "s" / "optuna.journal"
    _journal_study(path, "mine", [({"optim.lr": 1e-3, "optim.batch_size": 8}, [0.4, 0.9])])
    cases = {
        "no such file or folder": ["front", str(tmp_path / "missing")],
        "cannot read storage 'nosuchdb://x'": ["front", "nosuchdb://x"],
        "no sqlite file": ["load", f"sqlite:///{tmp_path / 'none.db'}"],
        "study 'other' not found": ["front", str(path), "--study", "other"],
        "unknown objective column 'utility'": ["front", str(path), "--objectives", "asr:min,utility:max"],
        "--ref: 2 objectives": ["front", str(path), "--ref", "1"],
        "--label: expected STUDY=LABEL": ["load", str(path), "--label", "x"],
        "holds no optuna.journal": ["report", str(tmp_path / "empty"), "-o", str(tmp_path / "r")],
        # output under a regular file (root ignores permission bits, not this): named before anything is read
        f"'{tmp_path / 'file'}' is not a folder": ["report", str(path), "-o", str(tmp_path / "file" / "r")],
        f"cannot create '{tmp_path / 'file' / 'x.csv'}'": ["load", str(path), "-o", str(tmp_path / "file" / "x.csv")],
        f"cannot create '{tmp_path / 'file' / 'f.tex'}'": ["front", str(path), "-o", str(tmp_path / "file" / "f.tex")],
        "exists and is not a folder": ["report", str(path), "-o", str(tmp_path / "file")],
        "--color-by: no column 'nosuch'": ["report", str(path), "-o", str(tmp_path / "r"), "--color-by", "lr,nosuch"],
    }
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("a regular file")
    for message, argv in cases.items():
        assert main(argv) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (message, err)
    with pytest.raises(SystemExit) as exit_:  # argparse's own errors: one line too
        main(["plot", str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and "invalid choice" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(path), "-o", str(tmp_path / "r"), "--bootstrap", "-1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--bootstrap: must be >= 0, got -1" in err and err.count("\n") == 1
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "r").exists()  # nothing created


def test_cli_subprocess_front_and_report(tmp_path) -> None:
    path = tmp_path / "s" / "optuna.journal"
    _journal_study(path, "mine", [
        ({"optim.lr": 1e-3, "optim.batch_size": 8, "method.ema.eta": 1.0}, [0.4, 0.9]),
        ({"optim.lr": 1e-4, "optim.batch_size": 4, "method.ema.eta": 0.25}, [0.1, 0.6]),
        ({"optim.lr": 1e-4, "optim.batch_size": 8, "method.ema.eta": 0.25}, [0.5, 0.5]),
    ])  # fmt: skip
    proc = subprocess.run([PYTHON, "-m", "analysis", "front", str(tmp_path / "s"), "-o", str(tmp_path / "f.tex")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 of 3 recipes on the front; hypervolume 0.7200" in proc.stdout  # 0.6 · 0.9 + 0.3 · 0.6
    assert r"\begin{tabular}" in (tmp_path / "f.tex").read_text()
    proc = subprocess.run([PYTHON, "-m", "analysis", "front", str(tmp_path / "nope")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_training_curves_read_every_logged_trial_and_reach_the_report(tmp_path) -> None:
    from analysis import curves

    df = synthetic_trials(n=6, seeds_per_recipe=1)
    logged = []
    for i, row in enumerate(df.itertuples()):
        run = tmp_path / "runs" / str(i)
        run.mkdir(parents=True)
        if i % 3 == 2:  # a trial without a log (pruned before its first step, an old run dir) is left out
            df.loc[row.Index, "run_dir"] = str(run)
            continue
        lines = [json.dumps({"step": s, "loss": 2.0 / s + i, "grad_norm": 1.0 + s, "lr": 1e-3}) for s in (1, 2, 3)]
        text = "\n".join(lines) + ("\n{\"step\": 4, \"lo" if i == 0 else "\n")  # trial 0 is still writing
        (run / "train_log.jsonl").write_text(text)
        df.loc[row.Index, "run_dir"] = str(run)
        logged.append((row.study, row.trial))
    logs = curves.training_logs(df)
    assert sorted(set(zip(logs["study"], logs["trial"], strict=True))) == sorted(logged)
    assert len(logs) == 3 * len(logged)  # the half-written line is skipped
    assert logs.groupby(["study", "trial"])["step"].apply(list).map(lambda s: s == [1, 2, 3]).all()
    files = curves.training_curves(logs, tmp_path / "curves")
    assert [p.suffix for p in files] == [".pdf", ".png"] and _is_png(files[1])
    assert curves.training_curves(logs.iloc[:0], tmp_path / "none") == []

    index = write_report(df, tmp_path / "report", ReportOptions(objectives=ASR_UTIL, progress=False))
    text = index.read_text()
    assert "Training curves" in text and "training_curves.png" in text
    assert (tmp_path / "report" / "training_logs.csv").is_file()


def test_early_signals_reach_the_report_with_table_and_figure(tmp_path) -> None:
    df = synthetic_trials(n=8, seeds_per_recipe=1)
    df["steps"] = 100
    for i, row in enumerate(df.itertuples()):
        run = tmp_path / "runs" / str(i)
        run.mkdir(parents=True)
        # safety_loss at steps 10 and 25 falls as the final ASR rises: a perfect inverse early signal
        (run / "checks.jsonl").write_text("".join(json.dumps({"step": s, "safety_loss": 3.0 - row.asr + s / 1e4})
                                                  + "\n" for s in (10, 25, 50)))  # fmt: skip
        df.loc[row.Index, "run_dir"] = str(run)
    index = write_report(df, tmp_path / "report", ReportOptions(objectives=ASR_UTIL, n_boot=100, progress=False))
    text = index.read_text()
    assert "Early signals" in text and "early_signals.png" in text
    table = pd.read_csv(tmp_path / "report" / "early_signals.csv")
    assert set(table["fraction"]) == {0.1, 0.25, 0.5} and (table["n"] == 8).all()
    assert table["spearman"].tolist() == pytest.approx([-1.0, -1.0, -1.0])
    assert _is_png(tmp_path / "report" / "early_signals.png")
    assert "Fewer than three trials had been checked" not in text and "resamples runs" not in text
    assert (table["n_runs"] == 8).all() and (table["no_final"] == 0).all()

    # a short run whose first check comes after 10 % and 25 % of its steps: only 50 % is ranked, and the report
    # says why the others are missing
    for i in range(len(df)):
        lines = (tmp_path / "runs" / str(i) / "checks.jsonl").read_text().splitlines()
        (tmp_path / "runs" / str(i) / "checks.jsonl").write_text(lines[-1] + "\n")  # step 50 only
    write_report(df, tmp_path / "late", ReportOptions(objectives=ASR_UTIL, n_boot=100, progress=False))
    text = (tmp_path / "late" / "index.md").read_text()
    assert "Fewer than three trials had been checked by 10%, 25% of their steps" in text
    assert "| safety_loss | 0.5 | asr | 8 | 8 | -1.00 [" in text and "| safety_loss | 0.1 |" not in text
    assert "| 50% |" in text  # checked_at: the fraction of the run the used check sits at
    assert _is_png(tmp_path / "late" / "early_signals.png")

    plain = write_report(synthetic_trials(n=8, seeds_per_recipe=1), tmp_path / "plain",
                         ReportOptions(objectives=ASR_UTIL, progress=False))  # fmt: skip
    assert "Early signals" not in plain.read_text()  # no checks.jsonl anywhere: no section
