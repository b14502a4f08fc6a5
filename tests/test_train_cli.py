"""`python -m sweeps.train` end to end: bad input fails fast and cleanly; a toy trial writes a complete run dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
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
        (["eval.asr.limit=-1"], "eval.asr.limit"),
        (["eval.asr.limit=0"], "eval.asr.limit"),
        (["trial.check_every=5", "trial.check_metric=asr", "data.harmful=null"], "trial.check_metric"),
        (["model.device=gpu"], "model.device"),
        (["method=[ema]", "method.ema.include='(q_proj'"], "method.ema.include"),
        (["data.template='Q: {question}'"], "data.template"),
        (["+optim.momentun=0.9"], "optim.momentun"),
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


def test_cuda_device_without_cuda_is_one_line(tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc, run_dir = _run(tmp_path, "model.device=cuda")
    assert proc.returncode == 2 and "model.device: 'cuda' but CUDA is not available" in proc.stderr
    assert "Traceback" not in proc.stderr and not (run_dir / "config.yaml").exists()


def test_unwritable_run_dir_fails_before_anything_runs(tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    env = {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([PYTHON, "-m", "sweeps.train", f"hydra.run.dir={blocker / 'run'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: hydra.run.dir: cannot write to {blocker / 'run'}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_weights_dir_fails_before_training(tmp_path, toy_root) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "weights").write_text("not a folder")
    proc, _ = _run(tmp_path, "output.save_final=true", "optim.max_steps=1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "output.save_final / output.save_eval_weights: cannot write to" in proc.stderr
    assert "Traceback" not in proc.stderr and "training on" not in proc.stdout + proc.stderr
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong_shape"])
def test_broken_safetensors_name_the_file_and_tensor(tmp_path, toy_root, damage) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    model_dir = tmp_path / "model"
    shutil.copytree(toy_root / "aligned", model_dir)
    weights = model_dir / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(os.urandom(4096))
    else:
        tensors = load_file(weights)
        tensors["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(7, 7)
        save_file(tensors, weights, metadata={"format": "pt"})
    proc, run_dir = _run(tmp_path, f"model.name_or_path={model_dir}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = next(line for line in proc.stderr.splitlines() if line.startswith("error:"))
    assert f"model.name_or_path: {weights}" in line
    if damage == "wrong_shape":
        assert "'model.layers.0.self_attn.q_proj.weight' has shape [7, 7]" in line
    assert "Traceback" not in proc.stderr and not (run_dir / "metrics.json").exists()


def test_ctrl_c_exits_130_with_a_note_and_no_metrics(tmp_path, toy_root) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR), "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "output.txt"
    with log.open("w") as err:
        args = [PYTHON, "-m", "sweeps.train", f"hydra.run.dir={run_dir}", "optim.max_steps=99999", "optim.batch_size=2"]
        # SIGINT as at a terminal: a test run started in the background (nohup, `cmd &`) inherits SIGINT ignored, and
        # Python then never raises KeyboardInterrupt
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=err, stderr=subprocess.STDOUT,  # Hydra logs to stdout
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
        deadline = time.monotonic() + 300
        while "training on" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        time.sleep(3)  # a few steps in
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    stderr = log.read_text()
    assert rc == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    note = json.loads((run_dir / "interrupted.json").read_text())
    assert note["status"] == "interrupted" and note["stage"] == "training" and note["step"] >= 1
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "generations.jsonl").exists()
