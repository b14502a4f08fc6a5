"""Data for a trial: every source (toy world, local file, HF hub) becomes a list of `Example`s."""

from sweeps.data._examples import DataError, Example
from sweeps.data._load import load_examples, poison_examples

__all__ = ["DataError", "Example", "load_examples", "poison_examples"]
