"""Safety and utility landscapes around a checkpoint: random directions, interpolations, planes, basin summaries."""

from landscape.directions import Scope, random_direction, select_parameters
from landscape.perturb import Perturbation, checksum

__all__ = ["Perturbation", "Scope", "checksum", "random_direction", "select_parameters"]
