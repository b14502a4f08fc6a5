"""A Hydra callback that prints one line per job of a multirun (read from each run dir's metrics.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
COLUMNS = ("status", "asr", "over_refusal", "safety_loss", "utility_loss", "utility_acc", "steps", "wall_time_s")


def summarize(sweep_dir: str | Path) -> str:
    rows = []
    for metrics_file in sorted(Path(sweep_dir).glob("*/metrics.json"), key=lambda p: _job_num(p.parent.name)):
        metrics = json.loads(metrics_file.read_text())
        overrides = _overrides(metrics_file.parent)
        rows.append([metrics_file.parent.name, *(_fmt(metrics.get(c)) for c in COLUMNS), overrides])
    header = ["job", *COLUMNS, "overrides"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r[:-1], widths, strict=True)) + "  " + str(r[-1])
             for r in [header, *rows]]  # fmt: skip
    return "\n".join(lines)


def _job_num(name: str) -> int:
    return int(name) if name.isdigit() else 1 << 30


def _overrides(run_dir: Path) -> str:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ""
    items = [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]
    return " ".join(i for i in items if not i.startswith(("hydra.", "trial.")))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


class SummaryCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        table = summarize(config.hydra.sweep.dir)
        print(f"\nsweep results ({config.hydra.sweep.dir}):\n{table}", flush=True)
