"""analysis on a real sweep: the sweeps issue's tiny toy sweep (our Hydra sweeper), loaded and reported."""

from __future__ import annotations

import json
import os
import subprocess

import pandas as pd
import pytest

from analysis.load import load
from analysis.pareto import DEFAULT_OBJECTIVES, pareto_front
from tests.conftest import CACHE_DIR, PYTHON, ROOT
from tests.test_sweeps import TINY


@pytest.mark.slow
def test_load_and_report_a_tiny_toy_sweep(tmp_path, toy_root) -> None:
    sweep = tmp_path / "sweep"
    env = {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    cmd = [PYTHON, "-m", "sweeps.train", "-m", "hydra/sweeper=safety", f"hydra.sweep.dir={sweep}",
           "hydra.sweeper.study_name=tiny", *TINY, "method=[ema]", "optim.lr=tag(log, interval(1e-4, 3e-3))",
           "method.ema.eta=choice(1.0, 0.25)", "hydra.sweeper.constraints=['asr<=0.05']",
           "hydra.sweeper.enqueue=[{optim.lr: 0.001, method.ema.eta: 0.25}]", "hydra.sweeper.n_trials=3"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    df = load([sweep])
    assert df["study"].tolist() == ["tiny"] * 3 and df["trial"].tolist() == [0, 1, 2]
    assert (df["state"] == "COMPLETE").all()
    assert df.attrs["directions"] == {"asr": "minimize", "utility_acc": "maximize"}
    assert {"optim.lr", "method.ema.eta"} <= set(df.attrs["params"])
    for _, row in df.iterrows():
        assert row["run_dir"] == str(sweep / str(row["trial"]))  # trial N's files, whatever run_dir attr says
        metrics = json.loads((sweep / str(row["trial"]) / "metrics.json").read_text())
        assert (row["asr"], row["utility_acc"]) == (metrics["asr"], metrics["utility_acc"])
        assert row["safety_loss"] == metrics["safety_loss"]
        assert row["effective_batch_size"] == metrics["effective_batch_size"] == 8
        assert row["constraint/asr<=0.05"] == pytest.approx(metrics["asr"] - 0.05)
        assert row["feasible"] == (metrics["asr"] <= 0.05)
        assert row["method"] == ("EMA η=0.25" if row["method.ema.eta"] == 0.25 else "SFT")
    assert df.loc[0, "baseline"] and df.loc[0, "optim.lr"] == 0.001  # the enqueued baseline
    assert len(pareto_front(df, DEFAULT_OBJECTIVES)) >= 1

    out = tmp_path / "report"
    proc = subprocess.run([PYTHON, "-m", "analysis", "report", str(sweep), "-o", str(out), "--bootstrap", "200",
                           "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "index.html").is_file() and (out / "pareto_lr.png").stat().st_size > 0
    front = pd.read_csv(out / "front.csv")
    # the bootstrap reads the per-prompt verdicts behind each ASR: their mean is the metric
    assert front["asr_boot"].to_numpy() == pytest.approx(front["asr"].to_numpy())
    assert (front["asr_prompts"] == 16).all()  # eval.asr.limit=16
