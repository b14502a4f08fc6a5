"""Sweep studies → the figures and tables of a paper: one tidy trial table, Pareto fronts, hypervolume, dominance
between methods, hyperparameter-effect figures, seed statistics and a report folder. CLI: `python -m analysis`.

Names are imported lazily, so that `analysis.style` (shared with the landscape package) stays a light import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnalysisError": "analysis.errors",
    "load": "analysis.load", "add_constraints": "analysis.load", "method_label": "analysis.load",
    "Objective": "analysis.pareto", "DEFAULT_OBJECTIVES": "analysis.pareto", "parse_objectives": "analysis.pareto",
    "pareto_front": "analysis.pareto", "on_front": "analysis.pareto", "pareto_mask": "analysis.pareto",
    "hypervolume": "analysis.pareto", "hypervolume_history": "analysis.pareto", "reference_point": "analysis.pareto",
    "compare": "analysis.pareto",
    "aggregate_seeds": "analysis.stats", "asr_bootstrap": "analysis.stats",
    "ReportOptions": "analysis.report", "write_report": "analysis.report",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
