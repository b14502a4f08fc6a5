"""The Hydra side of the sweeper: turns Hydra job results into Outcomes for sweeps.study.runner.Sweep."""

from __future__ import annotations

import functools
import logging
import re
import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from hydra_plugins.safety_sweeper.config import SafetySweeperConf  # noqa: F401  (registers the config)
from sweeps.config import ConfigError, TrainConfig
from sweeps.study.runner import (
    ComposeError,
    Outcome,
    Sweep,
    SweepError,
    SweepSettings,
    run_torchrun,
    torchrun_command,
)
from sweeps.study.space import SearchSpaceError
from sweeps.validate import removed_key_error, to_train_config, validate

log = logging.getLogger(__name__)


def _outcome(ret: JobReturn) -> Outcome:
    # the job's output dir (<sweep dir>/<trial number>); ret.working_dir is the launcher's cwd
    try:
        run_dir = str(ret.hydra_cfg.hydra.runtime.output_dir)
    except Exception:
        run_dir = None
    if ret.status == JobStatus.COMPLETED:
        value = ret.return_value
        if isinstance(value, dict):
            return Outcome(metrics=value, run_dir=run_dir)
        error = f"the task returned {type(value).__name__}, not a metrics dict"
        return Outcome(metrics=None, error=error, run_dir=run_dir)
    error = ret._return_value  # the exception the job raised
    return Outcome(metrics=None, error=f"{type(error).__name__}: {error}", run_dir=run_dir)


class SafetySweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        kwargs = {k: (OmegaConf.to_container(v) if isinstance(v, DictConfig | list) or OmegaConf.is_config(v) else v)
                  for k, v in kwargs.items()}  # fmt: skip
        self.settings = SweepSettings(**kwargs)
        self.launcher = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _launch(self, overrides: list[list[str]], numbers: list[int]) -> list[Outcome]:
        if self.settings.launch == "torchrun":
            return [self._torchrun(o, n) for o, n in zip(overrides, numbers, strict=True)]
        # job numbers = trial numbers, so each trial's run dir is <sweep dir>/<trial number>
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            rets = self.launcher.launch([tuple(o) for o in overrides], initial_job_idx=numbers[0])
        else:
            rets = [r for o, n in zip(overrides, numbers, strict=True)
                    for r in self.launcher.launch([tuple(o)], initial_job_idx=n)]  # fmt: skip
        return [_outcome(r) for r in rets]

    def _torchrun(self, overrides: list[str], number: int) -> Outcome:
        """One trial as `torchrun ... -m sweeps.train <overrides> hydra.run.dir=<its run dir>`: the run dir is the one
        Hydra's launcher would give job `number` (<sweep dir>/<hydra.sweep.subdir>), so the study looks the same."""
        assert self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = cfg.hydra.job.id = number
        run_dir = Path(self.config.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
        log.info("trial %d: torchrun with %d process(es) into %s", number, self.settings.nproc_per_node, run_dir)
        args = ["-m", "sweeps.train", *self._app_args(), *overrides, f"hydra.run.dir={run_dir}"]
        return run_torchrun(torchrun_command(self.settings.nproc_per_node, args), run_dir)

    def _app_args(self) -> list[str]:
        """The command line's config name/dir and the hydra overrides that shape a job (logging, verbosity, ...);
        not the sweeper's, the launcher's or the run/sweep dirs, which the trial's own process does not use."""
        assert self.config is not None
        h = self.config.hydra
        args = [f"--config-name={h.job.config_name}"]
        args += [f"--config-dir={s.path.removeprefix('file://')}" for s in h.runtime.config_sources
                 if s.provider == "command-line"]  # fmt: skip
        skip = ("hydra.sweeper", "hydra/sweeper", "hydra.launcher", "hydra/launcher", "hydra.sweep.", "hydra.run.",
                "hydra.mode")  # fmt: skip
        return args + [o for o in h.overrides.hydra if not o.lstrip("+~").startswith(skip)]

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        try:
            self._check_launcher()
            validate = functools.partial(_validate, nproc=self.settings.nproc_per_node)
            sweep = Sweep(self.settings, arguments, sweep_dir, compose=self._compose, validate=validate)
            counts = sweep.run(self._launch)
        except (SweepError, SearchSpaceError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        n = sum(counts.values())
        print(f"study '{self.settings.study_name}': {n} trial(s) run now "
              f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed); "
              f"storage {sweep.url}\nwatch it with: {sweep_dashboard(sweep.url)}", flush=True)  # fmt: skip
        return counts

    def _check_launcher(self) -> None:
        if self.settings.launch == "torchrun" and not isinstance(self.launcher, BasicLauncher):
            raise SweepError(f"hydra.sweeper.launch: torchrun starts every trial on this machine, but the launcher is "
                             f"{type(self.launcher).__name__} (e.g. cluster=slurm); use one or the other")
        if self.settings.n_jobs > 1 and isinstance(self.launcher, BasicLauncher) and self.settings.launch != "torchrun":
            raise SweepError(f"hydra.sweeper.n_jobs: {self.settings.n_jobs} trials at a time need a parallel launcher "
                             "(e.g. cluster=slurm); Hydra's basic launcher would run them one after another, each "
                             "holding a lease meanwhile; for parallel local trials start the command several times")

    def _compose(self, overrides: list[str]) -> TrainConfig:
        """The typed trial config these overrides give, composed as the launcher will."""

        assert self.config is not None
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except (HydraException, OmegaConfBaseException) as e:
            raise ComposeError(_one_line(e)) from None
        with open_dict(cfg):
            del cfg["hydra"]
        try:
            return to_train_config(cfg)
        except ConfigError as e:
            raise ComposeError(str(e)) from None


def _validate(cfg: TrainConfig, nproc: int = 1) -> list[str]:
    """The value checks every trial runs first (sweeps.config.validate), one line per problem; with nproc > 1 also
    those its ranks will run under torchrun (this process is a world of one), with nproc_per_node named as ours."""
    lines = []
    try:
        validate(cfg)
    except ConfigError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip() and line.strip() != "invalid config:"]
    if nproc > 1:
        from sweeps.distributed import World, distributed_errors

        lines += distributed_errors(cfg, World(nproc, 0, 0), nproc_key="hydra.sweeper.nproc_per_node")
    return list(dict.fromkeys(lines))


def _one_line(e: Exception) -> str:
    """Hydra's composition errors span several lines (hints, search path); keep the part that names the key."""
    text = str(e)
    first = text.splitlines()[0].strip() if text.strip() else type(e).__name__
    missing = isinstance(e.__cause__, ConfigKeyError | ConfigAttributeError)
    if missing and (m := re.match(r"Could not override '([^']+)'", first)):
        if hint := removed_key_error(m[1]):
            return hint
        return (f"'{m[1]}' is not a key of the trial config ({str(e.__cause__).splitlines()[0]}); "
                f"a new key needs '+{m[1]}=...'")  # fmt: skip
    if e.__cause__ is not None:
        first = f"{first}: {str(e.__cause__).splitlines()[0]}"
    options = re.search(r"Available options in '([^']+)':\n((?:\t.*\n?)+)", text)
    if options:
        first += f" (available in {options[1]}: {', '.join(o.strip() for o in options[2].splitlines())})"
    return first


def sweep_dashboard(url: str) -> str:
    from sweeps.study.storage import dashboard_command

    return dashboard_command(url)
