"""`cluster=slurm` on a real single-node SLURM cluster (.ci/slurm_cluster.sh): a sweep as a job array through
hydra-submitit-launcher, and a scancelled trial failed and re-queued.

The cluster: the one SLURM_CONF points at (.ci/run starts one for the whole run), else one started here for this
module; skipped with the reason where SLURM is not installed or not root.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import ROOT
from tests.test_sweeps import _cmd, _env

SCRIPT = ROOT / ".ci" / "slurm_cluster.sh"
# a CPU-only node: no GPU, one core and a little memory per trial
LOCAL = ["cluster=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]  # fmt: skip


def _up(env: dict[str, str]) -> bool:
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='pip install -e ".[slurm]"')
    env = _env()
    if env.get("SLURM_CONF") and shutil.which("sinfo") and _up(env):
        yield env
        return
    if not shutil.which("slurmctld"):
        pytest.skip("no SLURM here: apt-get install slurm-wlm munge, then bash .ci/slurm_cluster.sh pytest ...")
    folder = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=120)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr[-3000:]
    try:
        yield {**env, "SLURM_CONF": str(folder / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)


def _study(sweep_dir: Path, name: str) -> optuna.Study:
    from sweeps.study.storage import load_study

    return load_study(name, str(sweep_dir / "optuna.journal"))


@pytest.mark.slow
def test_sweep_runs_as_a_job_array_and_a_scancelled_trial_is_requeued(slurm_env, tmp_path, toy_root) -> None:
    # 4 trials in one array of 4; one task is scancelled while it trains
    args = [*LOCAL, "optim.lr=tag(log, interval(1e-4, 1e-3))", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=4",
            "optim.max_steps=100"]  # fmt: skip
    t0 = time.time()
    sweep = subprocess.Popen(_cmd(tmp_path, "slurm", *args), cwd=ROOT, env=slurm_env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    task, deadline = None, time.time() + 300
    while task is None and time.time() < deadline and sweep.poll() is None:
        time.sleep(1)
        squeue = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], env=slurm_env, capture_output=True,
                                text=True).stdout.split()  # fmt: skip
        running = sorted(j for j in squeue if "_" in j)  # array tasks: <array id>_<index>
        if running:  # cancel at once: on a quiet machine a 100-step toy trial ends within seconds
            task = running[0]
    assert task is not None, "no array task started: " + (sweep.communicate()[1][-3000:] if sweep.poll() else "")
    subprocess.run(["scancel", task], env=slurm_env, check=True)
    _, err = sweep.communicate(timeout=600)
    print(f"4-trial SLURM sweep with one scancel: {time.time() - t0:.1f} s")
    assert sweep.returncode == 0, err[-3000:]

    trials = _study(tmp_path, "slurm").trials
    cancelled = [t for t in trials if t.state == TrialState.FAIL]
    assert len(cancelled) == 1 and cancelled[0].user_attrs["requeued"]
    assert "ended without a result" in cancelled[0].user_attrs["fail_reason"]
    redo = [t for t in trials if t.user_attrs.get("requeued_from") == cancelled[0].number]
    assert len(redo) == 1 and redo[0].state == TrialState.COMPLETE and redo[0].params == cancelled[0].params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4  # exactly n_trials
    # the first four trials went out as one array: 4 tasks of one job id
    tasks = [m.groups() for p in (tmp_path / ".submitit").iterdir() if (m := re.fullmatch(r"(\d+)_(\d+)", p.name))]
    first = min(int(a) for a, _ in tasks)
    assert sorted(int(i) for a, i in tasks if int(a) == first) == [0, 1, 2, 3]

    # the same command again: nothing left to run
    again = subprocess.run(_cmd(tmp_path, "slurm", *args), cwd=ROOT, env=slurm_env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(_study(tmp_path, "slurm").trials) == len(trials)
