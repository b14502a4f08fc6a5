"""Turn a `DatasetConfig` into `Example`s."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from omegaconf import ListConfig

from sweeps.config import DatasetConfig
from sweeps.data._examples import DataError, Example
from sweeps.data._files import Row, read_file
from sweeps.data._hub import hub_label, read_hub

FIELDS = ("prompt", "input", "response", "answer")


def load_examples(spec: DatasetConfig, *, key: str, need: tuple[str, ...] = ("prompt",),
                  toy_splits: Callable[[str | None], list[Example]] | None = None) -> list[Example]:
    """Load the examples `spec` describes; every field in `need` must be non-empty in every kept row.

    `toy_splits` serves `source: toy` (split name → examples; sweeps.resolve binds it to the built toy world), so the
    data layer does not depend on the toy world, which itself serves its splits as `Example`s.
    Errors are one-line `DataError`s that start with `key` (the config key, e.g. "data.train").
    """
    if spec.source == "toy":
        if toy_splits is None:
            raise DataError(f"{key}: toy split '{spec.name}' needs the toy world (model.name_or_path=toy)")
        return subsample(toy_splits(spec.name), spec.limit, spec.seed)
    if spec.source == "file":
        if not spec.path:
            raise DataError(f"{key}.path: required when source=file")
        label = spec.path
        columns, rows = read_file(spec.path, spec.format, key)
    elif spec.source == "hub":
        if not spec.name:
            raise DataError(f"{key}.name: required when source=hub")
        label = hub_label(spec.name, spec.subset, spec.split)
        columns, rows = read_hub(spec.name, spec.subset, spec.split, key)
    else:
        raise DataError(f"{key}.source: '{spec.source}' is not one of ['file', 'hub', 'toy']")
    return _to_examples(spec, key, label, columns, rows, need)


def _to_examples(spec: DatasetConfig, key: str, label: str, columns: list[str], rows: list[Row],
                 need: tuple[str, ...]) -> list[Example]:
    for name, mapping in (("columns", spec.columns), ("value_map", spec.value_map)):
        unknown = sorted(set(mapping) - set(FIELDS))
        if unknown:
            raise DataError(f"{key}.{name}: unknown field(s) {unknown}; fields are {list(FIELDS)}")
    unknown = sorted(set(need) - set(FIELDS))
    if unknown:
        raise DataError(f"{key}: unknown needed field(s) {unknown}; fields are {list(FIELDS)}")
    need = tuple(dict.fromkeys(("prompt", *need)))  # an Example cannot exist without a prompt

    def check_column(column: str, what: str) -> None:
        if column not in columns and column.split(".")[0] not in columns:
            raise DataError(f"{key}.{what}: column '{column}' not in {label}; available columns: {columns}")

    mapped = {}
    for f in FIELDS:
        if f in spec.columns:
            check_column(spec.columns[f], f"columns.{f}")
            mapped[f] = spec.columns[f]
        elif f in columns:  # unmapped fields default to a same-named column
            mapped[f] = f
    for f in need:
        if f not in mapped:
            raise DataError(f"{key}.columns.{f}: required here but {label} has no '{f}' column; map it to one of "
                            f"{columns}")
    for column in spec.where:
        check_column(column, f"where.{column}")

    # A column's value, or a list of values any of which keeps the row (e.g. several XSTest prompt types).
    where = {c: {str(x) for x in v} if isinstance(v, (list, tuple, ListConfig)) else {str(v)}
             for c, v in spec.where.items()}
    value_map = {f: {str(k): str(v) for k, v in m.items()} for f, m in spec.value_map.items()}
    examples = []
    for loc, row in rows:
        if any(str(_lookup(row, c)) not in accepted for c, accepted in where.items()):
            continue
        values: dict[str, str | None] = {}
        for f, column in mapped.items():
            raw = _lookup(row, column)
            where_msg = f"{key}: {label} {loc}: field '{f}' (column '{column}')"
            if isinstance(raw, (dict, list)):
                # A default-mapped optional column of another shape (e.g. a list of answers) is just not ours.
                if f in need or f in spec.columns:
                    raise DataError(f"{where_msg} is a {type(raw).__name__}, not a single value")
                raw = None
            text = None if raw is None else value_map.get(f, {}).get(str(raw), str(raw))
            if f in need and (text is None or not text.strip()) and not spec.drop_empty:
                raise DataError(f"{where_msg} is {'missing' if raw is None else 'empty'}")
            values[f] = text if text and text.strip() else None
        if any(values.get(f) is None for f in need):  # only reached with drop_empty
            continue
        prompt = values["prompt"] or ""
        if spec.prompt_format is not None:
            prompt = spec.prompt_format.format(prompt=prompt, input=values.get("input") or "")
        elif values.get("input"):
            prompt = f"{prompt}\n\n{values['input']}"
        examples.append(Example(prompt=prompt, response=values.get("response"), answer=values.get("answer")))

    if not examples:
        raise DataError(f"{key}: no rows in {label}" + (f" with where={dict(spec.where)}" if spec.where else ""))
    if spec.start or spec.stop is not None:
        n = len(examples)
        examples = examples[spec.start:spec.stop]
        if not examples:
            raise DataError(f"{key}.start: {spec.start} is past the last of the {n} rows kept from {label}")
    return subsample(examples, spec.limit, spec.seed)


def _lookup(row: dict[str, Any], column: str) -> Any:
    """A column's value; "a.0.b" reaches into nested JSON (e.g. Alpaca's instances.0.output) when no such key."""
    if column in row or "." not in column:
        return row.get(column)
    value: Any = row
    for part in column.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def subsample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """At most `limit` examples, chosen with a seeded RNG; the chosen ones keep their original order."""
    if limit is None or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]
