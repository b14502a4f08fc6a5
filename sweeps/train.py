"""`python -m sweeps.train [overrides]`: one trial as a Hydra app (the thin edge around sweeps.trial.run_trial)."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sweeps.config import ConfigError
from sweeps.rundir import atomic_write_text
from sweeps.validate import removed_override_errors, to_train_config, validate

log = logging.getLogger("sweeps.train")
INTERRUPTED = 130  # the shell's exit status for a process stopped by SIGINT


class RunDirCheck(Callback):
    """hydra.callbacks.run_dir (conf/train.yaml): Hydra creates the run dir and writes .hydra/ before the app runs,
    so an unwritable hydra.run.dir would be a Hydra traceback; checked here first, as one line, exit 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.run.dir))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                pass
        except OSError as e:
            print(f"error: hydra.run.dir: cannot write to {folder} ({e.strerror or e})", file=sys.stderr)
            sys.exit(2)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(dcfg: DictConfig) -> dict:
    from sweeps import distributed
    from sweeps.trial import check_run_dir, run_trial  # heavy imports after config errors had their chance to fail

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    world = distributed.world()
    try:
        if world.active and multirun:
            raise ConfigError("torchrun: one trial per launch; run the sweep (--multirun) without torchrun")
        cfg = to_train_config(dcfg)
        validate(cfg)  # on every rank, before the process group: a bad config stops them all before training
        with distributed.session(cfg.model.device):
            run_dir = Path(distributed.broadcast(str(run_dir)))  # rank 0's (Hydra's timestamp may differ)
            if world.is_main:
                check_run_dir(run_dir, cfg)
                atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(dcfg, resolve=True))
            metrics = run_trial(cfg, run_dir, progress=world.is_main)
    except ConfigError as e:
        if not world.is_main:  # every rank checks the same config: rank 0 says it once
            sys.exit(2)
        log.error("%s", e)
        if multirun:
            raise  # the sweeper records the trial as failed, with this message as the reason
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if multirun:
            raise  # the sweeper decides what an interrupted study records
        print(f"interrupted: no results written (see {run_dir / 'interrupted.json'})", file=sys.stderr)
        sys.exit(INTERRUPTED)
    if world.is_main:
        print(f"run dir: {run_dir}")
    return metrics


if __name__ == "__main__":
    if removed := removed_override_errors(sys.argv[1:]):  # Hydra would reject these with a multi-line error
        print("error: " + "\n  ".join(removed), file=sys.stderr)
        sys.exit(2)
    main()
