"""Sweeps through our Hydra sweeper on the toy world: storage, resume, crash recovery, failures, workers, dashboard."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import CACHE_DIR, PYTHON, ROOT

# tiny trials: a few steps, small eval sets
TINY = ["optim.max_steps=4", "optim.batch_size=8", "eval.asr.limit=16", "data.utility.limit=8",
        "eval.asr.max_new_tokens=8", "eval.accuracy_max_new_tokens=12", "data.overrefusal.limit=8"]  # fmt: skip
SPACE = ["optim.lr=tag(log, interval(1e-4, 1e-3))", "optim.batch_size=choice(4, 8)"]


def _env() -> dict[str, str]:
    # one thread per process: several CPU workers must not oversubscribe the cores
    return {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def _cmd(sweep_dir: Path, study: str, *args: str) -> list[str]:
    keys = {a.split("=", 1)[0] for a in args}
    tiny = [a for a in TINY if a.split("=", 1)[0] not in keys]
    return [PYTHON, "-m", "sweeps.train", "-m", "hydra/sweeper=safety", f"hydra.sweep.dir={sweep_dir}",
            f"hydra.sweeper.study_name={study}", *tiny, *args]  # fmt: skip


def _sweep(sweep_dir: Path, study: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(sweep_dir, study, *args), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _study(sweep_dir: Path, name: str) -> optuna.Study:
    from sweeps.study.storage import load_study

    return load_study(name, str(sweep_dir / "optuna.journal"))


def _counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if not t.user_attrs.get("requeued") and t.state != TrialState.WAITING]


@pytest.mark.slow
def test_sweep_lands_trials_with_metrics_constraints_and_resumes(tmp_path, toy_root) -> None:
    args = [*SPACE, "hydra.sweeper.constraints=['asr<=0.05']",
            "hydra.sweeper.enqueue=[{optim.lr: 0.001, optim.batch_size: 8}]"]  # fmt: skip
    proc = _sweep(tmp_path, "s", *args, "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"optuna-dashboard {tmp_path / 'optuna.journal'} --host 127.0.0.1" in proc.stdout
    study = _study(tmp_path, "s")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert study.metric_names == ["asr", "utility_acc"]
    first = study.trials[0]
    assert first.params == {"optim.lr": 0.001, "optim.batch_size": 8} and first.user_attrs["baseline"]
    for t in study.trials:
        metrics = json.loads((tmp_path / str(t.number) / "metrics.json").read_text())
        assert t.values == [metrics["asr"], metrics["utility_acc"]]
        assert t.user_attrs["safety_loss"] == metrics["safety_loss"]
        assert Path(t.user_attrs["run_dir"]).resolve() == (tmp_path / str(t.number)).resolve()
        assert t.system_attrs["constraints:asr<=0.05"] == pytest.approx(metrics["asr"] - 0.05)
        assert t.user_attrs["constraint/asr<=0.05"] == pytest.approx(metrics["asr"] - 0.05)
        assert "feasible" in t.user_attrs
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3  # no duplicate suggestions
    mtimes = {t.number: (tmp_path / str(t.number) / "metrics.json").stat().st_mtime_ns for t in study.trials}

    # the same command again: nothing to do, nothing re-run or overwritten
    proc = _sweep(tmp_path, "s", *args, "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0 and "0 trial(s) run now" in proc.stdout
    assert len(_study(tmp_path, "s").trials) == 3
    # a larger total continues the study
    proc = _sweep(tmp_path, "s", *args, "hydra.sweeper.n_trials=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(tmp_path, "s")
    assert len(study.trials) == 4 and (tmp_path / "3" / "metrics.json").exists()
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4
    assert all((tmp_path / str(n) / "metrics.json").stat().st_mtime_ns == m for n, m in mtimes.items())

    # a different search space is refused, clearly
    proc = _sweep(tmp_path, "s", "optim.lr=tag(log, interval(1e-5, 1e-3))", *args[1:], "hydra.sweeper.n_trials=4")
    assert proc.returncode == 2 and "different space" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_diverged_trials_fail_or_become_infeasible_and_failure_rate_stops(tmp_path, toy_root) -> None:
    bad = ["optim=sgd", "optim.grad_clip=null", "optim.lr=choice(1e12, 1e13)", "optim.max_steps=6"]
    proc = _sweep(tmp_path, "fail", *bad, "hydra.sweeper.n_trials=2", "hydra.sweeper.max_failure_rate=1.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _study(tmp_path, "fail").trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert all("diverged" in t.user_attrs["fail_reason"] for t in trials)

    proc = _sweep(tmp_path, "inf", *bad, "hydra.sweeper.n_trials=2", "hydra.sweeper.on_failure=infeasible",
                  "hydra.sweeper.constraints=['asr<=0.05']", "hydra.sweeper.max_failure_rate=1.0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _study(tmp_path, "inf").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(t.values == [1.0, 0.0] and t.user_attrs["infeasible"] for t in trials)
    assert all(t.system_attrs["constraints:asr<=0.05"] > 0 for t in trials)

    proc = _sweep(tmp_path, "stop", *bad, "hydra.sweeper.n_trials=6", "hydra.sweeper.max_failure_rate=0.5")
    assert proc.returncode == 2 and "max_failure_rate" in proc.stderr
    assert len(_study(tmp_path, "stop").trials) == 3


def _wait_for(predicate, what: str, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (found := predicate()) is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _running(sweep_dir: Path, study: str, number: int) -> optuna.trial.FrozenTrial | None:
    if not (sweep_dir / "optuna.journal").exists():
        return None
    try:
        trials = _study(sweep_dir, study).get_trials(states=(TrialState.RUNNING,))
    except KeyError:  # the study is being created
        return None
    found = [t for t in trials if t.number == number and "lease" in t.user_attrs]
    return found[0] if found and (sweep_dir / str(number)).is_dir() else None


@pytest.mark.slow
def test_killed_sweep_rerun_at_once_completes_the_total(tmp_path, toy_root) -> None:
    # SIGKILL a 4-trial sweep during trial 1, rerun the same command at once (the lease, 120 s, is still fresh):
    # the rerun sees the lease's worker process is gone, re-queues the trial and ends with 4 COMPLETE.
    args = [*SPACE, "hydra.sweeper.n_trials=4", "optim.max_steps=40"]
    worker = subprocess.Popen(_cmd(tmp_path, "kill", *args), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        running = _wait_for(lambda: _running(tmp_path, "kill", 1), "trial 1 to start")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert not (tmp_path / "1" / "metrics.json").exists()  # killed inside trial 1
    assert _study(tmp_path, "kill").trials[1].state == TrialState.RUNNING

    start = time.time()
    proc = _sweep(tmp_path, "kill", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.time() - start < 120  # did not wait for the lease
    trials = _study(tmp_path, "kill").trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    lost = trials[running.number]
    assert lost.state == TrialState.FAIL and lost.user_attrs["requeued"]
    assert f"pid {running.user_attrs['lease']['pid']}" in lost.user_attrs["fail_reason"]
    assert "no longer running" in lost.user_attrs["fail_reason"]
    redo = [t for t in trials if t.user_attrs.get("requeued_from") == running.number]
    assert len(redo) == 1 and redo[0].state == TrialState.COMPLETE and redo[0].params == lost.params
    assert "4 trial(s) run now" not in proc.stdout and "3 trial(s) run now (3 complete" in proc.stdout


# each bad input: (extra overrides, the one line expected on stderr)
BAD_INPUTS = {
    "space key": (["optim.lrr=choice(1e-3, 1e-4)"],
                  "error: search space: 'optim.lrr' is not a key of the trial config"),
    "space value": (["optim.batch_size=choice(4, eight)"],
                    "error: search space: Error merging override optim.batch_size=eight: Value 'eight'"),
    "space value check": (["optim.lr=choice(1e-3, -1.0)"], "error: search space: optim.lr: must be > 0, got -1.0"),
    "objective": (["hydra.sweeper.objectives=[asrr:minimize]"],
                  "error: hydra.sweeper.objectives: 'asrr' is not a metric this config produces (available: asr,"),
    "objective without its data": (["data.harmful=null"],
                                   "error: hydra.sweeper.objectives: 'asr' is not a metric this config produces"),
    "constraint": (["hydra.sweeper.constraints=['asr_rate<=0.05']"],
                   "error: hydra.sweeper.constraints: 'asr_rate<=0.05' names 'asr_rate', not a metric"),
    "baseline key": (["hydra.sweeper.enqueue=[{optim.lrr: 0.001}]"],
                     "error: hydra.sweeper.enqueue[0]: 'optim.lrr' is not a searched parameter"),
    "baseline value": (["hydra.sweeper.enqueue=[{optim.lr: 0.001, optim.batch_size: 16}]"],
                       "error: hydra.sweeper.enqueue[0]: optim.batch_size=16 is not one of the choices [4, 8]"),
    "sampler kwargs": (["++hydra.sweeper.sampler_kwargs.n_startup=3"],
                       "error: hydra.sweeper.sampler_kwargs: TPESampler.__init__() got an unexpected keyword"),
    "n_jobs": (["hydra.sweeper.n_jobs=2"], "error: hydra.sweeper.n_jobs: 2 trials at a time need a parallel launcher"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_sweeper_input_fails_before_any_trial(tmp_path, toy_root, case: str) -> None:
    extra, line = BAD_INPUTS[case]
    proc = _sweep(tmp_path, "bad", *SPACE, "hydra.sweeper.n_trials=2", *extra, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(line), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Launching" not in proc.stdout + proc.stderr
    assert not (tmp_path / "optuna.journal").exists()  # no study, so no RUNNING or COMPLETE trial
    assert not [p for p in tmp_path.iterdir() if p.name.isdigit()]  # and no run dir


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicates(tmp_path, toy_root) -> None:
    args = [*SPACE, "hydra.sweeper.n_trials=4"]
    workers = [subprocess.Popen(_cmd(tmp_path, "two", *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[1][-2000:] for o in outs]
    trials = _study(tmp_path, "two").trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both took part
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1", "2", "3"]


@pytest.mark.slow
def test_pruning_single_objective_and_constraint_stop_multi_objective(tmp_path, toy_root) -> None:
    prune = ["optim.lr=choice(1e-3, 1e-7)", "optim.max_steps=20", "trial.check_every=5",
             "hydra.sweeper.objectives=[utility_loss:minimize]", "hydra.sweeper.n_trials=2",
             "hydra.sweeper.pruner=median", "++hydra.sweeper.pruner_kwargs.n_startup_trials=1",
             "hydra.sweeper.enqueue=[{optim.lr: 0.001}, {optim.lr: 1e-07}]"]  # fmt: skip
    proc = _sweep(tmp_path, "prune", *prune)
    assert proc.returncode == 0, proc.stderr[-3000:]
    good, bad = _study(tmp_path, "prune").trials
    assert good.state == TrialState.COMPLETE and set(good.intermediate_values) == {5, 10, 15, 20}
    assert bad.state == TrialState.PRUNED and "pruner (median)" in bad.user_attrs["prune_reason"]

    stop = ["optim.lr=choice(1e-2, 2e-2)", "optim.batch_size=2", "optim.max_steps=200", "trial.check_every=50",
            "trial.check_metric=asr", "++trial.stop_if.asr=0.5", "hydra.sweeper.n_trials=1"]  # fmt: skip
    proc = _sweep(tmp_path, "stop", *stop)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (t,) = _study(tmp_path, "stop").trials
    assert t.state == TrialState.PRUNED and t.user_attrs["prune_reason"].startswith("asr=")
    assert any(k.startswith("check/asr/") for k in t.user_attrs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_lists_the_study(tmp_path) -> None:
    from sweeps.study.storage import open_storage

    journal = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="dash", storage=open_storage(str(journal)), directions=["minimize"] * 2)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=2)
    port = _free_port()
    dashboard = Path(PYTHON).with_name("optuna-dashboard")
    proc = subprocess.Popen([str(dashboard), str(journal), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        body = None
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, "dashboard did not answer"
        assert [s["study_name"] for s in body["study_summaries"]] == ["dash"]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["method=[ema]", "eval.baseline=true", "eval.also_live=true", "trial.check_every=2", "trial.check_metric=asr",
     "+trial.stop_if.safety_loss=100"],
    ["data.harmful=null", "data.compliance=null", "eval.accuracy=null"],
])  # fmt: skip
def test_available_metrics_are_the_numbers_a_trial_writes(tmp_path, toy_root, extra: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from sweeps.study.metrics import available_metrics
    from sweeps.trial import run_trial
    from sweeps.validate import to_train_config

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        dcfg = compose("train", [*TINY, f"cache_dir={CACHE_DIR}", *extra])
    cfg = to_train_config(dcfg)
    metrics = run_trial(cfg, tmp_path, progress=False)
    assert metrics["status"] == "completed"
    numbers = {k for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert available_metrics(cfg) == numbers == available_metrics(dcfg)
