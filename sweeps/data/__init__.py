"""Data for a trial: every source (toy world, local file, HF hub) becomes a list of `Example`s."""

from sweeps.data._examples import DataError, Example
from sweeps.data._load import load_examples
from sweeps.data._mix import USER, mix_counts, mix_examples

__all__ = ["USER", "DataError", "Example", "load_examples", "mix_counts", "mix_examples"]
