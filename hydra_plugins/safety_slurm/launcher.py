"""hydra-submitit-launcher's SLURM launcher, with one change for sweeps: a job that ends without a result (scancel,
preemption, a lost node, the time limit) comes back as a failed trial that is re-queued, instead of an exception that
stops the sweep and loses the other trials of its array.

The parent's launch() ends with `[j.results()[0] for j in jobs]`: the first unfinished job raises, and where `sacct`
answers nothing (a cluster without slurmdbd, like the test cluster of .ci/slurm_cluster.sh) a cancelled job is waited
for forever (measured: the sweep hung after scancel). So launch() is restated here (hydra-submitit-launcher 1.2) with
that last line replaced by a wait on what every cluster has: the job's result file and `squeue`. Hydra loads launchers
from the hydra_plugins package only, hence its place here; without hydra-submitit-launcher (the `slurm` extra) the
module defines nothing, so Hydra's plugin scan stays quiet.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurm
except ImportError:  # the slurm extra is not installed
    _SubmititSlurm = None

log = logging.getLogger(__name__)


if _SubmititSlurm is not None:

    class RequeueingSlurmLauncher(_SubmititSlurm):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            return _launch(self, job_overrides, initial_job_idx)


def _launch(self: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    import submitit

    assert self.config is not None and len(job_overrides) > 0
    init_keys = {"submitit_folder", "max_num_timeout"}
    executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                     slurm_max_num_timeout=self.params.get("max_num_timeout", 0))  # fmt: skip
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                  for k, v in self.params.items() if k not in init_keys})  # fmt: skip
    log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, self.config.hydra.sweep.dir)
    Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    params: list[Any] = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    jobs = executor.map_array(self, *zip(*params, strict=True))
    lost = _wait(jobs)
    return [_result(job, list(o), job.job_id in lost) for job, o in zip(jobs, job_overrides, strict=True)]


GRACE_S = 15.0  # a job out of the queue gets this long for its result file to show (a shared filesystem may lag)


def _wait(jobs: list[Any], poll_s: float = 2.0) -> set[str]:
    """Until every job has a result file or left the queue without one; returns the ids of those lost."""
    lost: set[str] = set()
    gone_at: dict[str, float] = {}
    while waiting := [j for j in jobs if j.job_id not in lost and not j.paths.result_pickle.exists()]:
        queued = _queued({j.job_id.split("_")[0] for j in waiting})
        now = time.time()
        for job in waiting:
            if queued is None or job.job_id in queued:
                gone_at.pop(job.job_id, None)
            elif now - gone_at.setdefault(job.job_id, now) > GRACE_S:
                lost.add(job.job_id)
        time.sleep(poll_s)
    return lost


def _queued(array_ids: set[str]) -> set[str] | None:
    """The array tasks still pending or running (`<array>_<index>`); None when squeue cannot tell."""
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(sorted(array_ids))], capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode == 0:
        return set(proc.stdout.split())
    return set() if "Invalid job id" in proc.stderr else None  # ids that left the queue long ago are unknown


def _result(job: Any, overrides: list[str], lost: bool) -> JobReturn:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    why = "left the queue"
    if not lost:
        try:
            return job.results()[0]
        except (UncompletedJobError, FailedJobError) as e:
            why = (str(e).strip().splitlines() or ["no result"])[0][:300]
    reason = f"SLURM job {job.job_id} ended without a result ({why}: scancel, preemption, time limit or node loss)"
    log.warning("%s; its trial is re-queued", reason)
    _requeue(overrides)
    return JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=RuntimeError(reason))


def _requeue(overrides: list[str]) -> None:
    """Mark the job's trial `requeued` (it does not count towards n_trials) and enqueue its parameters again; the
    sweeper then records the trial as FAIL with the reason, and the next ask re-runs the parameters."""
    from sweeps.study.storage import load_study

    trial = {k: v.strip("'") for k, _, v in (o.partition("=") for o in overrides) if k.startswith("trial.")}
    if not {"trial.study", "trial.storage", "trial.trial_id"} <= trial.keys():
        return  # not a sweep trial (a plain -m multirun): nothing to re-queue
    study = load_study(trial["trial.study"], trial["trial.storage"])
    trial_id = int(trial["trial.trial_id"])
    frozen = study._storage.get_trial(trial_id)
    study._storage.set_trial_user_attr(trial_id, "requeued", True)
    study.enqueue_trial(dict(frozen.params), user_attrs={"requeued_from": frozen.number})
