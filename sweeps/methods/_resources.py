"""Build the methods' `Resources` for one trial: their data streams (loaded, subsampled, encoded once) and θ_base."""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path
from typing import Any

from sweeps.methods._base import MethodStack

DEFAULT_MEMORY_FRACTION = 0.05  # the paper's safety-sample budget: m = 5 % of the user data


def memory_size(size: int | None, n_user: int) -> int:
    return size if size is not None else max(1, math.ceil(DEFAULT_MEMORY_FRACTION * n_user))


def build_resources(methods: MethodStack, fmt: Any, *, n_user: int, max_length: int, world: Any = None,
                    base_path: Path | None = None, seed: int = 0) -> Any:  # fmt: skip
    """Every `method.<name>.<stream>` data set, encoded with the trial's formatter. A method's `size` argument
    (None = 5 % of the user data) caps the stream, drawn with the data set's own seed so trials share it."""
    from sweeps.config import ConfigError, DatasetConfig
    from sweeps.data import DataError, load_examples
    from sweeps.methods._context import Resources

    toy = None
    if world is not None:
        from sweeps.toyworld import toy_examples

        toy = functools.partial(toy_examples, world=world)
    streams = {}
    for m in methods.methods:
        for arg in type(m).streams:
            spec = DatasetConfig(**getattr(m, arg))
            key = f"method.{m.name}.{arg}"
            try:
                examples = load_examples(spec, key=key, need=("prompt", "response"), toy_splits=toy)
            except DataError as e:
                raise ConfigError(str(e)) from None
            n = memory_size(getattr(m, "size", None), n_user)
            if n < len(examples):
                examples = random.Random(spec.seed).sample(examples, n)
            streams[f"{m.name}.{arg}"] = [fmt.encode_pair(e.prompt, e.response, max_length) for e in examples]
    override = next((m.base for m in methods.methods if getattr(m, "base", None)), None)
    base = Path(override) if override else base_path
    needs = next((m for m in methods.methods if m.uses_base and getattr(m, "enabled", True)), None)
    if base is None and needs is not None:
        raise ConfigError(f"method.{needs.name}.base: no θ_base known for this model (the toy world's base/ or the "
                          "alignment stage's input model); give a model directory or a .safetensors / .gguf file")
    return Resources(streams=streams, base_path=base, seed=seed)
