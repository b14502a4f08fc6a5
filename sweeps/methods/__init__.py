"""Training methods as hook objects: see `TrainingMethod` for when each hook runs, `TrainingContext` for what
`setup` receives. Importing this package registers every method (REGISTRY: key → class)."""

from sweeps.methods._base import REGISTRY, MethodStack, TrainingMethod, build_methods, known_method_errors
from sweeps.methods._context import Resources, Stream, TrainingContext
from sweeps.methods.ema import EMA

__all__ = ["EMA", "REGISTRY", "MethodStack", "Resources", "Stream", "TrainingContext", "TrainingMethod",
           "build_methods", "known_method_errors"]
