"""Studies: Optuna search over trial configs, driven by the Hydra sweeper in hydra_plugins/safety_sweeper."""

from sweeps.study.runner import Outcome, Sweep, SweepError, SweepSettings
from sweeps.study.space import SearchSpaceError, parse_space

__all__ = ["Outcome", "SearchSpaceError", "Sweep", "SweepError", "SweepSettings", "parse_space"]
