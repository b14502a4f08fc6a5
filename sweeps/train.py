"""`python -m sweeps.train [overrides]`: one trial as a Hydra app (the thin edge around sweeps.trial.run_trial)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sweeps.config import ConfigError
from sweeps.rundir import atomic_write_text
from sweeps.validate import to_train_config, validate

log = logging.getLogger("sweeps.train")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(dcfg: DictConfig) -> dict:
    from sweeps.trial import run_trial  # heavy imports after config errors had their chance to fail fast

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        cfg = to_train_config(dcfg)
        validate(cfg)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(dcfg, resolve=True))
        metrics = run_trial(cfg, run_dir)
    except ConfigError as e:
        log.error("%s", e)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed, with this message as the reason
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"run dir: {run_dir}")
    return metrics


if __name__ == "__main__":
    main()
