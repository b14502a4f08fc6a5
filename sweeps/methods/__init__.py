"""Training methods as hook objects: see `TrainingMethod` for when each hook runs, `TrainingContext` for what
`setup` receives. Importing this package registers every method (REGISTRY: key → class, one conf/method/<key>.yaml
each)."""

from sweeps.methods._base import (
    REGISTRY,
    MethodStack,
    TrainingMethod,
    build_methods,
    known_method_errors,
    shadow_errors,
)
from sweeps.methods._context import Resources, Stream, TrainingContext
from sweeps.methods.agem import AGEM
from sweeps.methods.der import DER, DERpp
from sweeps.methods.ema import EMA
from sweeps.methods.ewc import EWC
from sweeps.methods.lisa import Lisa
from sweeps.methods.lwf import LwF
from sweeps.methods.magmax import MagMax
from sweeps.methods.refresh import Refresh
from sweeps.methods.safelora import SafeLoRA

__all__ = ["AGEM", "DER", "EMA", "EWC", "REGISTRY", "DERpp", "Lisa", "LwF", "MagMax", "MethodStack", "Refresh",
           "Resources", "SafeLoRA", "Stream", "TrainingContext", "TrainingMethod", "build_methods",
           "known_method_errors", "shadow_errors"]
