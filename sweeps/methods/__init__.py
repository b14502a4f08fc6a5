"""Training methods as hook objects: see `TrainingMethod` for when each hook runs."""

from sweeps.methods._base import MethodStack, TrainingMethod, build_methods, known_method_errors
from sweeps.methods.ema import EMA

__all__ = ["EMA", "MethodStack", "TrainingMethod", "build_methods", "known_method_errors"]
