"""Search spaces from Hydra's override grammar, as Optuna distributions.

    interval(a, b)            float uniform         int(interval(a, b))   int uniform
    tag(log, interval(a, b))  log-uniform           range(a, b[, step])   stop-exclusive grid, ordered
    choice(x, y, ...)         categorical           key=value             fixed (not searched)
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)


class SearchSpaceError(ValueError):
    """A search-space entry that cannot become a distribution; the message names the key."""


def _choices(override: Override) -> list[Any]:
    out = []
    for x in override.sweep_iterator(transformer=Transformer.encode):
        if not isinstance(x, str | int | float | bool | type(None)):
            x = str(x)
        out.append(x)
    return out


def to_distribution(override: Override) -> BaseDistribution | str:
    key = override.get_key_element()
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(_choices(override))
    if isinstance(value, RangeSweep):
        if value.shuffle:
            return CategoricalDistribution(_choices(override))
        start, stop, step = value.start, value.stop, value.step
        if step is None or step == 0 or (stop - start) / step <= 0:
            raise SearchSpaceError(f"{key}: empty range({start}, {stop}, {step})")
        last = start + (math.ceil((stop - start) / step) - 1) * step  # stop is exclusive
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(int(start), int(last), step=int(step))
        return FloatDistribution(float(start), float(last), step=float(step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if not value.start < value.end:
            raise SearchSpaceError(f"{key}: interval needs start < end, got ({value.start}, {value.end})")
        if log and value.start <= 0:
            raise SearchSpaceError(f"{key}: a log interval needs start > 0, got {value.start}")
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise SearchSpaceError(f"{key}: unsupported sweep {override.input_line}")


def parse_space(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """(searched parameters, fixed key=value overrides); later arguments win over earlier ones."""
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
    except HydraException as e:
        raise SearchSpaceError(str(e).splitlines()[0]) from None
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element()
        value = to_distribution(override)
        space.pop(key, None)
        fixed.pop(key, None)
        if isinstance(value, BaseDistribution):
            space[key] = value
        else:
            fixed[key] = value
    return space, fixed


def grid_values(key: str, dist: BaseDistribution) -> list[Any]:
    """Every value of a discrete distribution (for the grid sampler)."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        n = round((dist.high - dist.low) / dist.step)
        return [dist.low + i * dist.step for i in range(n + 1)]
    raise SearchSpaceError(f"{key}: the grid sampler needs choice(...) or range(...), not a continuous interval")


def grid_size(space: dict[str, BaseDistribution]) -> int:
    return math.prod(len(grid_values(k, d)) for k, d in space.items())


def value_problem(dist: BaseDistribution, value: Any) -> str | None:
    """Why `value` is not one the distribution can take (None if it can)."""
    if isinstance(dist, CategoricalDistribution):
        return None if value in dist.choices else f"is not one of the choices {list(dist.choices)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "is not a number"
    if not dist._contains(dist.to_internal_repr(value)):  # range and step, the check Optuna applies on ask
        return f"lies outside the searched {describe(dist)}"
    return None


def describe(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return f"choice{tuple(dist.choices)}"
    kind = "int " if isinstance(dist, IntDistribution) else ""
    step = f", step {dist.step}" if dist.step is not None and dist.step != 1 else ""
    return f"{kind}range [{dist.low}, {dist.high}]{step}{' (log)' if dist.log else ''}"


def probe_points(space: dict[str, BaseDistribution], limit: int = 48) -> list[dict[str, Any]]:
    """Parameter sets that between them use every choice and both ends of every range: the first takes each
    parameter's first choice or low end, every other one changes a single parameter. Composing each shows before
    the first trial whether any value the sampler may suggest fails to compose."""
    base = {k: d.choices[0] if isinstance(d, CategoricalDistribution) else d.low for k, d in space.items()}
    points = [base]
    for k, d in space.items():
        if isinstance(d, CategoricalDistribution):
            others = list(d.choices[1:])
        else:
            others = [d.high]
            if isinstance(d, FloatDistribution) and d.step is None:
                # an interior value that is not a whole number: a float interval on an int key shows here
                mid = math.sqrt(d.low * d.high) if d.log else (d.low + d.high) / 2
                others.append(mid if mid != int(mid) else mid + (d.high - d.low) / 7)
        points += [{**base, k: v} for v in others]
    return points[:limit]


def fingerprint(space: dict[str, BaseDistribution], fixed: dict[str, str], objectives: dict[str, str],
                constraints: list[str]) -> dict[str, Any]:  # fmt: skip
    """What must not change when a study is continued; stored in the study and compared on resume."""
    body = {
        "space": {k: json.loads(distribution_to_json(v)) for k, v in sorted(space.items())},
        "fixed": dict(sorted(fixed.items())),
        "objectives": dict(objectives),
        "constraints": sorted(c.replace(" ", "") for c in constraints),
    }
    body["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return body
