from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SafetySweeperConf:
    """Fields mirror sweeps.study.runner.SweepSettings (see its comments)."""

    _target_: str = "hydra_plugins.safety_sweeper.sweeper.SafetySweeper"
    study_name: str = "study"
    storage: Optional[str] = None  # noqa: UP045
    n_trials: int = 20
    n_jobs: int = 1
    objectives: list[str] = field(default_factory=lambda: ["asr:minimize", "utility_acc:maximize"])
    constraints: list[str] = field(default_factory=list)
    sampler: str = "tpe"
    seed: Optional[int] = 0  # noqa: UP045  (Hydra's plugin scan cannot resolve postponed annotations)
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    pruner: str = "none"
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    enqueue: list[Any] = field(default_factory=list)
    on_failure: str = "fail"
    worst: dict[str, float] = field(default_factory=lambda: {"asr": 1.0, "utility_acc": 0.0})
    max_failure_rate: float = 0.5
    lease_seconds: float = 120.0
    launch: str = "hydra"
    nproc_per_node: int = 1


ConfigStore.instance().store(group="hydra/sweeper", name="safety", node=SafetySweeperConf, provider="safety_sweeper")
