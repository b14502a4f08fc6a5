"""Checks of one data-set spec (DatasetConfig), before anything is read: for `validate` and the methods' streams."""

from __future__ import annotations

import os

from sweeps.config import DatasetConfig

SOURCES = {"toy", "file", "hub"}


def check_dataset(errors: list[str], key: str, spec: DatasetConfig | None) -> None:
    """Append one line per problem with a data-set spec at `key` (shared by data.*, model.align.* and methods)."""
    if spec is None:
        return
    if spec.source not in SOURCES:
        errors.append(f"{key}.source: '{spec.source}' is not one of {sorted(SOURCES)}")
    elif spec.source == "file":
        if not spec.path:
            errors.append(f"{key}.path: required when source=file")
        elif not os.path.isfile(spec.path):
            errors.append(f"{key}.path: file not found: {spec.path}")
    elif not spec.name:
        errors.append(f"{key}.name: required when source={spec.source}")
    if spec.start < 0 or (spec.stop is not None and spec.stop <= spec.start):
        errors.append(f"{key}.start/stop: need 0 <= start < stop, got start={spec.start} stop={spec.stop}")
    if spec.limit is not None and spec.limit <= 0:
        errors.append(f"{key}.limit: must be > 0 or null, got {spec.limit}")
    if spec.prompt_format is not None:
        try:
            spec.prompt_format.format(prompt="", input="")
        except (KeyError, IndexError, ValueError) as e:
            errors.append(f"{key}.prompt_format: only {{prompt}} and {{input}} may appear (literal braces doubled): "
                          f"{type(e).__name__} {e}")
