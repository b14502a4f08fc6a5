"""The embedded toy safety world: a tiny Llama, its tokenizer, and synthetic data, built by the project's code."""

from sweeps.toyworld._build import ensure_world, run_world_key, world_key
from sweeps.toyworld._splits import TOY_SPLITS, toy_examples
from sweeps.toyworld._world import World, WorldConfig

__all__ = ["TOY_SPLITS", "World", "WorldConfig", "ensure_world", "run_world_key", "toy_examples", "world_key"]
