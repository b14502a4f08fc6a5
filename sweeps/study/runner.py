"""The sweep loop behind our Hydra sweeper: ask Optuna for trials, launch them, tell the results.

Kept free of Hydra types: `launch(overrides, numbers)` is any callable that runs trials and returns one `Outcome`
each, so the loop is testable on its own and the plugin in hydra_plugins/ stays thin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution
from optuna.trial import Trial, TrialState

from sweeps.rundir import atomic_write_text
from sweeps.study.lease import DEAD, EXPIRED, describe, new_lease, process_start, verdict
from sweeps.study.metrics import available_metrics, check_problems
from sweeps.study.space import (
    SearchSpaceError,
    fingerprint,
    grid_size,
    grid_values,
    parse_space,
    probe_points,
    value_problem,
)
from sweeps.study.storage import (
    StorageError,
    ask_lock,
    dashboard_command,
    is_journal,
    open_storage,
    resolve_storage_url,
)

log = logging.getLogger(__name__)
DIRECTIONS = ("minimize", "maximize")
FAILURE_POLICIES = ("fail", "infeasible")
SAMPLERS = ("tpe", "nsga2", "random", "grid")
PRUNERS = ("none", "median", "hyperband")
LAUNCHES = ("hydra", "torchrun")


class SweepError(RuntimeError):
    """A sweep-level user error or stop condition; the message says what to change."""


@dataclass
class SweepSettings:
    study_name: str = "study"
    storage: str | None = None  # None: a journal file in the sweep dir; else an SQLAlchemy URL
    n_trials: int = 20  # the study's total, over all runs and workers
    n_jobs: int = 1  # trials launched together (> 1 needs a parallel launcher)
    # lists, not dicts, so that a shell override replaces them: ["metric:minimize", ...], ["asr<=0.05", ...]
    objectives: list[str] = field(default_factory=lambda: ["asr:minimize", "utility_acc:maximize"])
    constraints: list[str] = field(default_factory=list)
    sampler: str = "tpe"  # tpe | nsga2 | random | grid
    seed: int | None = 0
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    pruner: str = "none"  # none | median | hyperband (single-objective studies)
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # key -> Hydra sweep grammar
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # baseline recipes run first (once)
    on_failure: str = "fail"  # fail: FAIL the trial | infeasible: COMPLETE with `worst` values, constraints violated
    worst: dict[str, float] = field(default_factory=lambda: {"asr": 1.0, "utility_acc": 0.0})
    max_failure_rate: float = 0.5
    # a RUNNING trial whose worker stopped renewing this long ago is failed and re-queued (a dead worker on the same
    # host at once, see sweeps.study.lease)
    lease_seconds: float = 120.0
    # hydra: each trial is a job of Hydra's launcher (in this process, or cluster=slurm); torchrun: each trial is a
    # `torchrun --standalone --nproc_per_node N -m sweeps.train` subprocess (run_torchrun below)
    launch: str = "hydra"
    nproc_per_node: int = 1


@dataclass
class Outcome:
    metrics: dict[str, Any] | None  # the trial's metrics.json content
    error: str | None = None  # why the job failed (exception), if it did
    run_dir: str | None = None


Launch = Callable[[list[list[str]], list[int]], list[Outcome]]

STDERR_TAIL = "torchrun_stderr.txt"  # a failed torchrun trial's last stderr lines, in its run dir
_TAIL_LINES = 200
# torchrun's own variables: a sweeper started inside a torchrun job must not hand its rank to the trial's ranks
_TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RUN_ID")  # fmt: skip


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """`torchrun --standalone` (a free rendezvous port per job, so workers on one machine do not collide), through
    this interpreter so that the trial runs in the sweeper's environment."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def run_torchrun(command: list[str], run_dir: str | Path) -> Outcome:
    """Run one trial's torchrun job to its end; its outcome is the metrics.json rank 0 wrote into run_dir. A non-zero
    exit (any rank failed, or the job was killed) is a failed trial even if a metrics.json exists; its stderr tail is
    kept in run_dir/STDERR_TAIL. The job's stderr is passed on live, stdout is inherited."""
    run_dir = Path(run_dir)
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_ENV}  # CUDA_VISIBLE_DEVICES passes through
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                sys.stderr.write(line)
                tail.append(line)
            code = proc.wait()
        except BaseException:  # Ctrl-C or a sweeper error: stop the job (torchrun passes SIGTERM on to its ranks)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    metrics_file = run_dir / "metrics.json"
    if code == 0 and metrics_file.is_file():
        try:
            return Outcome(metrics=json.loads(metrics_file.read_text()), run_dir=str(run_dir))
        except (OSError, ValueError) as e:
            return Outcome(metrics=None, error=f"{metrics_file}: unreadable ({e})", run_dir=str(run_dir))
    atomic_write_text(run_dir / STDERR_TAIL, "".join(tail))
    how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
    if code == 0:
        how = "exited with 0 but rank 0 wrote no metrics.json"
    cause = _cause(list(tail))
    return Outcome(metrics=None, error=f"torchrun {how}{': ' + cause if cause else ''} (stderr tail: "
                   f"{run_dir / STDERR_TAIL})", run_dir=str(run_dir))  # fmt: skip


_ERROR_LINE = re.compile(r"^(error: |([A-Za-z_][\w.]*)?(Error|Exception|Interrupt): )")


def _cause(lines: list[str]) -> str:
    """The ranks' last error line (`error: ...` or `SomeError: ...`), not torchrun's own ChildFailedError summary."""
    found = [line.strip() for line in lines if _ERROR_LINE.match(line) and "ChildFailedError" not in line]
    return found[-1][:500] if found else ""


def parse_constraint(spec: str) -> tuple[str, str, float]:
    text = str(spec).replace(" ", "")
    for op in ("<=", ">="):
        metric, found, bound = text.partition(op)
        if found and metric:
            try:
                return metric, op, float(bound)
            except ValueError:
                break
    raise SweepError(f"hydra.sweeper.constraints: expected 'metric<=number' or 'metric>=number', got '{spec}'")


def parse_objectives(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        metric, _, direction = str(spec).replace(" ", "").partition(":")
        direction = {"min": "minimize", "max": "maximize"}.get(direction, direction)
        if not metric or direction not in DIRECTIONS:
            raise SweepError(f"hydra.sweeper.objectives: expected 'metric:minimize' or 'metric:maximize', got '{spec}'")
        if metric in out:
            raise SweepError(f"hydra.sweeper.objectives: '{metric}' is named twice")
        out[metric] = direction
    return out


def check_settings(s: SweepSettings) -> list[str]:
    errors = []
    if s.n_trials < 1:
        errors.append(f"hydra.sweeper.n_trials: must be >= 1, got {s.n_trials}")
    if s.n_jobs < 1:
        errors.append(f"hydra.sweeper.n_jobs: must be >= 1, got {s.n_jobs}")
    objectives: dict[str, str] = {}
    if not s.objectives:
        errors.append("hydra.sweeper.objectives: name at least one metric")
    try:
        objectives = parse_objectives(s.objectives)
    except SweepError as e:
        errors.append(str(e))
    if s.sampler not in SAMPLERS:
        errors.append(f"hydra.sweeper.sampler: '{s.sampler}' is not one of {list(SAMPLERS)}")
    if s.pruner not in PRUNERS:
        errors.append(f"hydra.sweeper.pruner: '{s.pruner}' is not one of {list(PRUNERS)}")
    if s.pruner != "none" and len(s.objectives) > 1:
        errors.append("hydra.sweeper.pruner: Optuna prunes single-objective studies only; for several objectives "
                      "use trial.stop_if (early stop on a violated constraint)")  # fmt: skip
    if s.on_failure not in FAILURE_POLICIES:
        errors.append(f"hydra.sweeper.on_failure: '{s.on_failure}' is not one of {list(FAILURE_POLICIES)}")
    if s.on_failure == "infeasible":
        errors += [f"hydra.sweeper.worst.{k}: needed by on_failure=infeasible" for k in objectives if k not in s.worst]
    if s.seed is not None and not 0 <= s.seed < 2**32 - s.n_trials:  # numpy's seed range, offset per ask
        errors.append(f"hydra.sweeper.seed: must be in [0, 2**32 - n_trials) or null, got {s.seed}")
    bad_worst = [k for k, v in s.worst.items() if not isinstance(v, int | float) or not math.isfinite(v)]
    errors += [f"hydra.sweeper.worst.{k}: must be a finite number, got {s.worst[k]}" for k in bad_worst]
    if not 0 <= s.max_failure_rate <= 1:
        errors.append(f"hydra.sweeper.max_failure_rate: must be in [0, 1], got {s.max_failure_rate}")
    if not (math.isfinite(s.lease_seconds) and s.lease_seconds >= 1):
        # renewed every lease_seconds/3: shorter floods the storage, infinite never lets another host recover it
        errors.append(f"hydra.sweeper.lease_seconds: must be a finite number >= 1, got {s.lease_seconds}")
    for spec in s.constraints:
        try:
            parse_constraint(spec)
        except SweepError as e:
            errors.append(str(e))
    return errors + _launch_errors(s)


def _launch_errors(s: SweepSettings) -> list[str]:
    if s.launch not in LAUNCHES:
        return [f"hydra.sweeper.launch: '{s.launch}' is not one of {list(LAUNCHES)}"]
    if not isinstance(s.nproc_per_node, int) or s.nproc_per_node < 1:
        return [f"hydra.sweeper.nproc_per_node: must be an integer >= 1, got {s.nproc_per_node}"]
    errors = []
    if s.launch == "hydra" and s.nproc_per_node > 1:
        errors.append(f"hydra.sweeper.nproc_per_node: {s.nproc_per_node} processes per trial need "
                      "hydra.sweeper.launch=torchrun")  # fmt: skip
    if s.launch == "torchrun" and s.n_jobs > 1:
        errors.append(f"hydra.sweeper.n_jobs: launch=torchrun runs one trial at a time ({s.nproc_per_node} "
                      "process(es) each); for trials side by side start the command several times, each worker "
                      "with its own CUDA_VISIBLE_DEVICES")  # fmt: skip
    return errors


def check_sampling(s: SweepSettings, space: dict[str, BaseDistribution]) -> list[str]:
    """Sampler and pruner arguments, tried on the real classes (Optuna would raise only once the sweep runs)."""
    errors = []
    kwargs = dict(s.sampler_kwargs)
    if "seed" in kwargs:
        errors.append("hydra.sweeper.sampler_kwargs.seed: set hydra.sweeper.seed instead (each ask offsets it)")
    elif s.sampler == "grid" and "search_space" in kwargs:
        errors.append("hydra.sweeper.sampler_kwargs.search_space: the grid is the search space (hydra.sweeper.params)")
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                make_sampler(s.sampler, s.seed, kwargs, space)
        except SearchSpaceError as e:
            errors.append(f"hydra.sweeper.sampler=grid: {e}")
        except (TypeError, ValueError) as e:
            errors.append(f"hydra.sweeper.sampler_kwargs: {str(e).splitlines()[0]}")
    if s.sampler == "grid" and not errors and s.n_trials > (size := grid_size(space)):
        errors.append(f"hydra.sweeper.n_trials: {s.n_trials} is more than the grid's {size} points (the grid sampler "
                      f"would repeat them); use n_trials={size} or widen the grid")  # fmt: skip
    if s.pruner == "none" and s.pruner_kwargs:
        errors.append(f"hydra.sweeper.pruner_kwargs: {dict(s.pruner_kwargs)} given, but hydra.sweeper.pruner=none")
    elif s.pruner in PRUNERS:
        try:
            make_pruner(s.pruner, dict(s.pruner_kwargs))
            json.dumps(dict(s.pruner_kwargs))  # passed on to the trials as JSON
        except (TypeError, ValueError) as e:
            errors.append(f"hydra.sweeper.pruner_kwargs: {str(e).splitlines()[0]}")
    return errors


def check_enqueue(entries: list[Any], space: dict[str, BaseDistribution], fixed: dict[str, str] | None = None,
                  ) -> list[str]:  # fmt: skip
    """Each baseline names searched parameters (or ones an override fixed), with values the parameter can take:
    Optuna would drop other keys silently (the baseline then runs sampled values) and crash on a value outside a
    choice."""
    errors = []
    for i, entry in enumerate(entries):
        key = f"hydra.sweeper.enqueue[{i}]"
        if not isinstance(entry, dict) or not entry:
            errors.append(f"{key}: expected a mapping from searched parameters to values, got {entry!r}")
            continue
        for name, value in entry.items():
            if name in (fixed or {}):
                continue  # pinned by an override for the whole study (see Sweep.baselines)
            if name not in space:
                errors.append(f"{key}: '{name}' is not a searched parameter (searched: {', '.join(space)})")
            elif (problem := value_problem(space[name], value)) is not None:
                errors.append(f"{key}: {name}={value!r} {problem}")
    return errors


def make_sampler(name: str, seed: int | None, kwargs: dict[str, Any],
                 space: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:  # fmt: skip
    kwargs = {**kwargs, "seed": seed}
    if name == "grid":
        return optuna.samplers.GridSampler({k: grid_values(k, d) for k, d in space.items()}, **kwargs)
    cls = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
           "random": optuna.samplers.RandomSampler}[name]  # fmt: skip
    return cls(**kwargs)


def make_pruner(name: str, kwargs: dict[str, Any] | None = None) -> optuna.pruners.BasePruner:
    kwargs = kwargs or {}
    if name == "median":
        return optuna.pruners.MedianPruner(**kwargs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**kwargs)
    return optuna.pruners.NopPruner()


def override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


class _Lease:
    """Renews the lease (sweeps.study.lease) on the given RUNNING trials from a background thread while they run."""

    def __init__(self, trials: Sequence[Trial], seconds: float) -> None:
        self.trials, self.seconds = list(trials), seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _renew(self) -> None:
        for t in self.trials:
            # a trial that finished meanwhile, or a storage hiccup, raises: the next renewal retries
            with contextlib.suppress(Exception):
                t.set_user_attr("lease", new_lease(self.seconds))

    def _run(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            self._renew()

    def __enter__(self) -> _Lease:
        self._renew()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _lease_of(t: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    lease = t.user_attrs.get("lease")
    if isinstance(lease, dict):
        return lease
    if "lease_until" in t.user_attrs:  # studies written before leases named their worker
        return {"until": t.user_attrs["lease_until"]}
    return None


def stale_reason(t: optuna.trial.FrozenTrial, now: float, unleased_after: float | None = None,
                 me: dict[str, str] | None = None, probe=process_start) -> str | None:  # fmt: skip
    """Why RUNNING trial `t` has no live worker any more, or None while it may still have one."""
    lease = _lease_of(t)
    if lease is None:
        # killed between ask and the first lease write: nothing will ever renew it
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if unleased_after is not None and now - started > unleased_after:
            return f"worker lost: no lease {now - started:.0f} s after the trial started"
        return None
    state = verdict(lease, now, me, probe)
    if state == DEAD:
        return f"worker lost: {describe(lease)} is no longer running"
    if state == EXPIRED:
        return f"worker lost: lease expired ({describe(lease)} stopped renewing it)"
    return None


def recover_stale(study: optuna.Study, now: float | None = None, unleased_after: float | None = None,
                  me: dict[str, str] | None = None, probe=process_start) -> list[int]:  # fmt: skip
    """Fail RUNNING trials whose worker died (same host: at once; elsewhere: once the lease expired) and re-queue
    their parameters, so that the study still reaches n_trials finished trials."""
    now = time.time() if now is None else now
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(t, now, unleased_after, me, probe)
        if reason is None:
            continue
        storage = study._storage
        try:
            storage.set_trial_user_attr(t._trial_id, "requeued", True)
            storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):
            continue  # another worker recovered it first
        study.enqueue_trial(dict(t.params), user_attrs={"requeued_from": t.number})
        log.warning("trial %d: %s; failed and re-queued", t.number, reason)
        recovered.append(t.number)
    return recovered


def budget_used(study: optuna.Study) -> int:
    """Trials that count towards n_trials: every asked trial except re-queued or surplus ones."""
    return len(_counted(study))


def _counted(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=states)
            if t.state != TrialState.WAITING and not t.user_attrs.get("requeued")
            and not t.user_attrs.get("surplus")]  # fmt: skip


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class ComposeError(ValueError):
    """A set of overrides that does not compose into a valid trial config; the message is one line per problem."""


# Given by the Hydra plugin: overrides -> the trial's config (TrainConfig or DictConfig), raising ComposeError; and
# a trial config -> its value errors, one line each
Compose = Callable[[list[str]], Any]
Validate = Callable[[Any], list[str]]


def _as_dict(config: Any) -> dict[str, Any]:
    """A composed trial config (a TrainConfig dataclass or an OmegaConf node) as plain containers."""
    from omegaconf import OmegaConf

    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return OmegaConf.to_container(config) if OmegaConf.is_config(config) else dict(config)


def _one_error(errors: list[str]) -> SweepError:
    errors = list(dict.fromkeys(errors))
    return SweepError(errors[0] if len(errors) == 1 else "invalid sweeper config:\n  " + "\n  ".join(errors))


class Sweep:
    def __init__(self, settings: SweepSettings, arguments: list[str], sweep_dir: str | Path,
                 compose: Compose | None = None, validate: Validate | None = None) -> None:  # fmt: skip
        """Checks everything it can before the study is opened: nothing is asked or written for a bad config."""
        errors = check_settings(settings)
        if errors:
            raise _one_error(errors)
        self.s = settings
        self.space, self.fixed = parse_space([f"{k}={v}" for k, v in settings.params.items()] + list(arguments))
        if not self.space:
            raise SweepError("empty search space: give hydra.sweeper.params or sweep overrides like "
                             "'optim.lr=tag(log, interval(1e-5, 1e-2))'")  # fmt: skip
        self.objectives = parse_objectives(settings.objectives)
        self.constraints = [parse_constraint(spec) for spec in settings.constraints]
        errors = check_sampling(settings, self.space) + check_enqueue(settings.enqueue, self.space, self.fixed)
        self.url = resolve_storage_url(settings.storage, sweep_dir)
        if compose is not None and not errors and not self._nothing_to_do():
            errors = self.check_trial_configs(compose, validate)
        if errors:
            raise _one_error(errors)
        if self.url.startswith("sqlite") and settings.n_jobs > 1:
            raise SweepError("hydra.sweeper.storage: sqlite with several workers crashed workers here; use the "
                             "default journal file (storage: null) or PostgreSQL")  # fmt: skip
        try:
            storage = open_storage(self.url)
        except StorageError as e:
            raise SweepError(str(e)) from None
        self.study = optuna.create_study(
            study_name=settings.study_name, storage=storage,
            sampler=self._sampler(0), pruner=make_pruner(settings.pruner, settings.pruner_kwargs),
            directions=list(self.objectives.values()), load_if_exists=True,
        )  # fmt: skip
        self._check_fingerprint()
        self._check_start(compose)
        self.worker = uuid.uuid4().hex[:8]

    def _nothing_to_do(self) -> bool:
        """The same study is already complete here (a rerun of a finished command): the trial-config checks, which
        cost seconds of imports, can be skipped. Looks only into a storage that exists, so nothing is created."""
        if is_journal(self.url) and not Path(self.url).is_file():
            return False
        if self.url.startswith("sqlite:///") and not Path(self.url[len("sqlite:///") :]).is_file():
            return False
        try:
            study = optuna.load_study(study_name=self.s.study_name, storage=open_storage(self.url))
        except KeyError:  # no such study yet
            return False
        except StorageError as e:
            raise SweepError(str(e)) from None
        ours = fingerprint(self.space, self.fixed, self.objectives, sorted(self.s.constraints))
        same = (study.user_attrs.get("fingerprint") or {}).get("hash") == ours["hash"]
        return same and budget_used(study) >= self.s.n_trials and not _counted(study, (TrialState.RUNNING,))

    def baselines(self) -> list[dict[str, Any]]:
        """The enqueued recipes, less the parameters an override fixed for every trial (one warning each)."""
        out = []
        for i, entry in enumerate(self.s.enqueue):
            for name in [k for k in entry if k in self.fixed]:
                log.warning("hydra.sweeper.enqueue[%d]: %s is fixed to %s by an override; the baseline runs with that",
                            i, name, self.fixed[name])  # fmt: skip
            if rest := {k: v for k, v in entry.items() if k not in self.fixed}:
                out.append(rest)
        return out

    def check_trial_configs(self, compose: Compose, validate: Validate | None = None) -> list[str]:
        """Compose the trial config for probe points of the space (every choice, both ends of every range); check
        that every objective and constraint names a metric all of them produce, then validate them as a trial would.
        Baselines need no composing of their own: check_enqueue kept their values inside the probed ranges."""
        errors: list[str] = []
        configs = []
        for point in probe_points(self.space):
            try:
                configs.append(compose(self._overrides(point)))
            except ComposeError as e:
                errors += [f"search space: {line}" for line in str(e).splitlines()]
        if errors:
            return errors
        available = set.intersection(*(available_metrics(cfg) for cfg in configs))
        listing = ", ".join(sorted(available))
        for metric in self.objectives:
            if metric not in available:
                errors.append(f"hydra.sweeper.objectives: '{metric}' is not a metric this config produces "
                              f"(available: {listing})")  # fmt: skip
        for spec, (metric, _, _) in zip(self.s.constraints, self.constraints, strict=True):
            if metric not in available:
                errors.append(f"hydra.sweeper.constraints: '{spec}' names '{metric}', not a metric this config "
                              f"produces (available: {listing})")  # fmt: skip
        if errors:
            return errors  # at once: the value checks below import the trial's heavy modules (transformers)
        for cfg in configs:
            errors += check_problems(cfg, self.s.pruner)
            errors += [f"search space: {line}" for line in (validate(cfg) if validate else [])]
        return errors

    def _check_fingerprint(self) -> None:
        fp = fingerprint(self.space, self.fixed, self.objectives, sorted(self.s.constraints))
        stored = self.study.user_attrs.get("fingerprint")
        if stored is None:
            self.study.set_user_attr("fingerprint", fp)
            with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use; the warning is noise
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(list(self.objectives))
            return
        if stored.get("hash") != fp["hash"]:
            changed = [k for k in ("space", "fixed", "objectives", "constraints") if stored.get(k) != fp[k]]
            raise SweepError(
                f"study '{self.s.study_name}' in {self.url} was run with a different {', '.join(changed)}; "
                "continue it with the same command, or start a new study (hydra.sweeper.study_name=...)"
            )

    def _check_start(self, compose: Compose | None) -> None:
        """A study's trials start from one set of weights. The fingerprint sees overrides, not the default toy world
        or alignment recipe, which can change under them (the world did on 2026-12-06): a resumed study would then
        mix starting points, and a finished one report the old."""
        if compose is None or any(k == "world" or k.startswith(("world.", "model.align")) for k in self.space):
            return
        done = next((t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if t.user_attrs.get("run_dir")), None)  # fmt: skip
        recorded = Path(done.user_attrs["run_dir"]) / ".hydra" / "config.yaml" if done else None
        if recorded is None or not recorded.is_file():
            return
        from sweeps.resolve import run_start_key  # torch: the plugin that calls this has it loaded already

        then = run_start_key(yaml.safe_load(recorded.read_text()) or {})
        try:
            config = compose(self._overrides(dict(done.params)))
        except ComposeError:
            return  # the trial-config checks say what is wrong with the overrides
        now = run_start_key(_as_dict(config))
        if then is not None and now is not None and then != now:
            raise SweepError(f"study '{self.s.study_name}' in {self.url}: its trials ran on {then} (trial "
                             f"{done.number}'s {recorded}), new ones would run on {now}; start a new study "
                             "(hydra.sweeper.study_name=..., or another hydra.sweep.dir)")  # fmt: skip

    def _sampler(self, offset: int) -> optuna.samplers.BaseSampler:
        seed = None if self.s.seed is None else int(self.s.seed) + offset
        return make_sampler(self.s.sampler, seed, self.s.sampler_kwargs, self.space)

    def _overrides(self, params: dict[str, Any]) -> list[str]:
        fixed = [f"{k}={v}" for k, v in self.fixed.items() if k not in params]
        return fixed + [f"{k}={override_value(v)}" for k, v in params.items()]

    def trial_overrides(self, trial: Trial) -> list[str]:
        info = [
            f"trial.study={self.s.study_name}", f"trial.storage='{self.url}'", f"trial.number={trial.number}",
            f"trial.trial_id={trial._trial_id}", f"trial.pruner={self.s.pruner}",
            f"trial.pruner_kwargs='{json.dumps(dict(self.s.pruner_kwargs))}'",
            f"trial.single_objective={'true' if len(self.objectives) == 1 else 'false'}",
        ]  # fmt: skip
        return self._overrides(trial.params) + info

    def _ask(self) -> list[Trial]:
        with ask_lock(self.url):
            recover_stale(self.study, unleased_after=self.s.lease_seconds)
            used = budget_used(self.study)
            if used >= self.s.n_trials:
                return []
            trials = []
            for _ in range(min(self.s.n_jobs, self.s.n_trials - used)):
                # A fixed seed would replay the same suggestions in every resumed or parallel worker; offsetting it
                # by the study's trial count keeps suggestions reproducible from the history yet distinct.
                self.study.sampler = self._sampler(len(self.study.get_trials(deepcopy=False)))
                t = self.study.ask(self.space)
                t.set_user_attr("lease", new_lease(self.s.lease_seconds))  # first, so a crash here is recoverable
                t.set_user_attr("worker", self.worker)
                trials.append(t)
        if not is_journal(self.url) and not self.url.startswith("sqlite"):
            trials = self._drop_surplus(trials)  # no shared lock across machines: check afterwards
        return trials

    def _drop_surplus(self, trials: list[Trial]) -> list[Trial]:
        allowed = set(sorted(t.number for t in _counted(self.study))[: self.s.n_trials])
        keep = []
        for t in trials:
            if t.number in allowed:
                keep.append(t)
            else:
                t.set_user_attr("surplus", True)
                t.set_user_attr("fail_reason", "budget reached by other workers")
                self.study.tell(t, state=TrialState.FAIL)
        return keep

    def run(self, launch: Launch) -> dict[str, int]:
        for params in self.baselines():
            self.study.enqueue_trial(params, user_attrs={"baseline": True}, skip_if_exists=True)
        log.info("study '%s' in %s; watch it with: %s", self.s.study_name, self.url, dashboard_command(self.url))
        counts = {"complete": 0, "pruned": 0, "failed": 0}
        self._next_note = 0.0
        while True:
            trials = self._ask()
            if not trials:
                if self._wait_for_others():
                    continue
                break
            try:
                with _Lease(trials, self.s.lease_seconds):
                    outcomes = launch([self.trial_overrides(t) for t in trials], [t.number for t in trials])
            except KeyboardInterrupt:
                self._requeue(trials, "interrupted (Ctrl-C)")
                raise
            except Exception as e:  # the launcher itself failed: give the trials back rather than leave them RUNNING
                self._requeue(trials, f"launcher error: {type(e).__name__}: {str(e)[:500]}")
                raise
            for trial, outcome in zip(trials, outcomes, strict=True):
                if self.study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
                    # another worker took it over while its lease had lapsed (e.g. the storage was unreachable)
                    log.warning("trial %d was re-queued by another worker meanwhile; its result is not recorded",
                                trial.number)  # fmt: skip
                    continue
                counts[self._tell(trial, outcome)] += 1
            done = sum(counts.values())
            failed = counts["failed"]
            if failed and done >= min(3, self.s.n_trials) and failed / done > self.s.max_failure_rate:
                raise SweepError(f"{failed} of {done} trials failed (max_failure_rate={self.s.max_failure_rate}); "
                                 "see fail_reason in the study or the run dirs' logs")  # fmt: skip
        finished = len(_counted(self.study, FINISHED))
        if finished < self.s.n_trials:  # a guard: the loop above only ends once every counted trial finished
            raise SweepError(f"study '{self.s.study_name}': {finished} of hydra.sweeper.n_trials={self.s.n_trials} "
                             "trials finished; run the command again to complete it")  # fmt: skip
        return counts

    def _wait_for_others(self) -> bool:
        """The budget is asked for. While other workers still run trials, pause and return True (the caller asks
        again: a trial whose worker dies meanwhile is re-queued and run here); False once none is running."""
        running = _counted(self.study, states=(TrialState.RUNNING,))
        if not running:
            return False
        now = time.time()
        if now >= self._next_note:
            held = []
            for t in running:
                lease = _lease_of(t) or {}
                until = lease.get("until")
                left = max(until - now, 0) if isinstance(until, int | float) else 0
                held.append(f"{t.number} ({describe(lease)}, lease {left:.0f} s left)")
            log.info("all %d trials are asked for; waiting for trial(s) %s on other workers to finish or their lease "
                     "to expire", self.s.n_trials, ", ".join(held))  # fmt: skip
            self._next_note = now + 60
        time.sleep(min(5.0, self.s.lease_seconds / 3))
        return True

    def _requeue(self, trials: list[Trial], reason: str) -> None:
        """Give interrupted trials back at once, so the next run re-runs them without waiting for the lease."""
        for t in trials:
            try:
                t.set_user_attr("requeued", True)
                t.set_user_attr("fail_reason", reason)
                self.study.tell(t, state=TrialState.FAIL)
                self.study.enqueue_trial(dict(t.params), user_attrs={"requeued_from": t.number})
            except Exception:  # already finished; leave it
                continue
        log.warning("interrupted: trial(s) %s re-queued", [t.number for t in trials])

    def _tell(self, trial: Trial, outcome: Outcome) -> str:
        m = outcome.metrics or {}
        if outcome.run_dir:
            trial.set_user_attr("run_dir", outcome.run_dir)
        for k, v in m.items():
            if isinstance(v, int | float | str | bool) and k not in self.objectives:
                trial.set_user_attr(k, v)
        status = m.get("status")
        if outcome.error is None and status == "pruned":
            trial.set_user_attr("prune_reason", m.get("prune_reason", ""))
            self.study.tell(trial, state=TrialState.PRUNED)
            return "pruned"
        reason = outcome.error
        values = None
        if reason is None:
            if status != "completed":
                reason = f"trial status '{status}'" + (f" at step {m['diverged_at']}" if m.get("diverged_at") else "")
            else:
                values = [m.get(k) for k in self.objectives]
                bad = [k for k, v in zip(self.objectives, values, strict=True)
                       if not isinstance(v, int | float) or not math.isfinite(v)]  # fmt: skip
                if bad:
                    reason, values = f"objective(s) {bad} missing or not finite in metrics.json", None
        if reason is None:
            self._constraints(trial, m)
            self.study.tell(trial, values=[float(v) for v in values])
            return "complete"
        trial.set_user_attr("fail_reason", reason[:2000])
        log.warning("trial %d failed: %s", trial.number, reason.splitlines()[0] if reason else "")
        if self.s.on_failure == "infeasible":
            trial.set_user_attr("infeasible", True)
            self._constraints(trial, {}, violated=True)
            self.study.tell(trial, values=[float(self.s.worst[k]) for k in self.objectives])
        else:
            self.study.tell(trial, state=TrialState.FAIL)
        return "failed"

    def _constraints(self, trial: Trial, m: dict[str, Any], violated: bool = False) -> None:
        feasible = True
        for metric, op, bound in self.constraints:
            value = m.get(metric)
            if violated or not isinstance(value, int | float):
                c = 1.0  # unknown counts as violated
            else:
                c = value - bound if op == "<=" else bound - value
            trial.set_constraint(f"{metric}{op}{bound}", c)
            trial.set_user_attr(f"constraint/{metric}{op}{bound}", c)  # optuna-dashboard 0.21 shows user attrs only
            feasible &= c <= 0
        if self.constraints:
            trial.set_user_attr("feasible", feasible)
