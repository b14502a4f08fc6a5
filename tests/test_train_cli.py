"""`python -m sweeps.train` end to end: bad input fails fast and cleanly; a toy trial writes a complete run dir."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CACHE_DIR, PYTHON, ROOT


def _run(tmp_path: Path, *overrides: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, Path]:
    run_dir = tmp_path / "run"
    env = {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(
        [PYTHON, "-m", "sweeps.train", f"hydra.run.dir={run_dir}", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return proc, run_dir


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["optim.lr=-0.1"], "optim.lr"),
        (["optim.batch_size=0"], "optim.batch_size"),
        (["method=[ema]", "method.ema.eta=1.5"], "method.ema.eta"),
        (["data.train.source=file", "+data.train.path=/no/such.csv"], "data.train.path"),
        (["model.name_or_path=./no/such/model"], "model.name_or_path"),
    ],
)
def test_bad_input_exits_nonzero_with_named_key_and_no_results(tmp_path, overrides, needle) -> None:
    proc, run_dir = _run(tmp_path, *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert err_lines and needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.json").exists()


def test_unknown_config_group_option_fails_before_running(tmp_path) -> None:
    proc, run_dir = _run(tmp_path, "model=no_such_model")
    assert proc.returncode != 0 and "no_such_model" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.json").exists()


def test_bad_data_row_names_file_row_and_field(tmp_path, toy_root) -> None:
    bad = tmp_path / "task.csv"
    bad.write_text("question,answer\nwhat is 1+1 ?,2\nwhat is 2+2 ?,\n")
    proc, run_dir = _run(
        tmp_path, "data.train.source=file", f"+data.train.path={bad}",
        "+data.train.columns={prompt: question, response: answer}",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(bad) in proc.stderr and "row 2" in proc.stderr and "response" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_toy_trial_writes_complete_run_dir(tmp_path, toy_root) -> None:
    proc, run_dir = _run(
        tmp_path, "optim.max_steps=20", "optim.batch_size=8", "method=[ema]", "method.ema.mode=shadow",
        "eval.also_live=true", "output.save_eval_weights=true", "data.utility.limit=30",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 20
    assert metrics["effective_batch_size"] == 8 and metrics["tokens_per_s"] > 0
    for key in ("asr", "safety_loss", "compliance_loss", "over_refusal", "utility_loss", "utility_acc"):
        assert 0 <= metrics[key] < 100, key
        assert f"live/{key}" in metrics
    assert metrics["eval_weights"] == "method" and metrics["ema/updates"] == 20
    gens = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    harmful = [g for g in gens if g["set"] == "harmful" and g["weights"] == "method"]
    assert len(harmful) == metrics["asr_n"]
    assert sum(g["attack_success"] for g in harmful) / len(harmful) == pytest.approx(metrics["asr"])
    assert len([g for g in gens if g["set"] == "utility" and g["weights"] == "method"]) == 30
    config = (run_dir / "config.yaml").read_text()
    assert "eta: 0.25" in config and "${" not in config  # resolved
    assert (run_dir / "train.log").exists()
    assert (run_dir / "weights" / "eval.safetensors").stat().st_size > 0


def test_diverged_trial_is_recorded_not_crashed(tmp_path, toy_root) -> None:
    proc, run_dir = _run(
        tmp_path, "optim=sgd", "optim.lr=1e12", "optim.max_steps=20", "optim.grad_clip=null",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["diverged_at"] >= 1
    assert "asr" not in metrics
