"""Where a config's model and data come from, shared by trials (sweeps.trial), the alignment CLI (sweeps.align) and
landscapes: the toy world (built once), `pkg:` packages, the cached alignment stage, and the configured data sets."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweeps.alignment import align_key, ensure_aligned
from sweeps.config import ConfigError, DataConfig, ModelConfig, TrainConfig, WorldConfig
from sweeps.data import Example, load_examples, mix_counts, mix_examples
from sweeps.models import resolve_package
from sweeps.scoring.scorer import EvalSets
from sweeps.toyworld import World, ensure_world, run_world_key, toy_examples

DATA_ROLES = ("train", "utility", "harmful", "refusal", "compliance", "overrefusal")


def uses_toy(model_name: str, data: DataConfig) -> bool:
    specs = [getattr(data, k) for k in DATA_ROLES] + list(data.overrefusal_extra.values())
    specs += [m.data for m in data.mixes.values()]
    return model_name == "toy" or any(s is not None and s.source == "toy" for s in specs)


def world_config(world: WorldConfig | dict) -> WorldConfig:
    """The toy-world settings as the dataclass (a landscape config carries them as a mapping)."""
    if isinstance(world, WorldConfig):
        return world
    known = {f.name for f in dataclasses.fields(WorldConfig)}
    unknown = sorted(set(world) - known)
    if unknown:
        raise ConfigError(f"world.{unknown[0]}: unknown toy-world setting (known: {sorted(known)})")
    return WorldConfig(**world)


def resolve_model(model: ModelConfig, data: DataConfig, world: WorldConfig | dict, cache_dir: str,
                  *, progress: bool = True) -> tuple[World | None, Path | None, ModelConfig]:  # fmt: skip
    """Where the weights come from: the toy world (built once), a `pkg:` package, then the cached alignment stage.

    Returns the toy world and its cache folder (None when unused) and a config whose name_or_path loads directly.
    """
    toy, root = None, None
    if uses_toy(model.name_or_path, data):
        toy = World(world_config(world))
        root = ensure_world(toy.cfg, cache_dir)
        if model.name_or_path == "toy":
            model = dataclasses.replace(model, name_or_path=str(root / "aligned"))
    model = ensure_aligned(resolve_package(model), data, cache_dir, progress=progress)
    return toy, root, model


def run_start_key(config: Mapping[str, Any]) -> str | None:
    """The weights a run starts from, as far as its config (a run's `.hydra/config.yaml`, or a composed config as a
    dict) decides them: `toy world <key>` or `alignment <key>` (the cache folder's), None for weights loaded as they
    are or a config this code cannot read. Studies compare it between a finished run and one they would start now:
    the default world or alignment recipe can change under unchanged overrides, and results must not mix."""
    if (world := run_world_key(config)) is not None:
        return f"toy world {world}"
    if not ((config.get("model") or {}).get("align") or {}).get("enabled"):
        return None
    from omegaconf import OmegaConf

    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), dict(config)))
        return f"alignment {align_key(resolve_package(typed.model), typed.data)}"
    except Exception:  # an older schema, a missing package or data file: unknown, so not compared
        return None


def load_data(d: DataConfig, world: World | None) -> tuple[list[Example], EvalSets]:
    toy = None if world is None else functools.partial(toy_examples, world=world)
    train_set = load_examples(d.train, key="data.train", need=("prompt", "response"), toy_splits=toy)
    if d.mixes:
        counts = mix_counts(d.mixes, len(train_set))  # too many for data.train fails before any mix is read
        pools = {tag: load_examples(m.data, key=f"data.mixes.{tag}.data", need=("prompt", "response"), toy_splits=toy)
                 for tag, m in d.mixes.items() if counts[tag] and m.data is not None}  # fmt: skip
        train_set = mix_examples(train_set, d.mixes, pools)

    def maybe(key: str, need: tuple[str, ...]) -> list[Example] | None:
        spec = getattr(d, key)
        return None if spec is None else load_examples(spec, key=f"data.{key}", need=need, toy_splits=toy)

    sets = EvalSets(
        harmful=maybe("harmful", ("prompt",)),
        refusal=maybe("refusal", ("prompt", "response")),
        compliance=maybe("compliance", ("prompt", "response")),
        overrefusal=maybe("overrefusal", ("prompt",)),
        overrefusal_extra={name: load_examples(spec, key=f"data.overrefusal_extra.{name}", toy_splits=toy)
                           for name, spec in d.overrefusal_extra.items() if spec is not None},
        utility=maybe("utility", ("prompt", "response")),
    )
    return train_set, sets
