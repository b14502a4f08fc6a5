"""Data mixes (`data.mixes.<tag>`): examples of other sources that replace user examples, so the training set keeps
the size of data.train (as in the papers: poisoned fine-tuning replaces a fraction p of the user data with harmful
answers; SafeInstr replaces m examples with refusals). Each mixed example carries its tag as its data source."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace

from sweeps.config import MixConfig
from sweeps.data._examples import DataError, Example

USER = "user"  # the tag of the user's own examples (data.train)


def mix_counts(mixes: Mapping[str, MixConfig], n_user: int) -> dict[str, int]:
    """How many user examples each mix replaces (ratio: round(ratio · n_user)); more than there are is an error."""
    counts = {}
    for tag, mix in mixes.items():
        if (mix.count or 0) < 0 or (mix.ratio or 0) < 0:
            raise DataError(f"data.mixes.{tag}: count and ratio must be >= 0, got count={mix.count} ratio={mix.ratio}")
        counts[tag] = mix.count or (round(mix.ratio * n_user) if mix.ratio else 0)
        if counts[tag] > n_user:  # a count (validate keeps a ratio within [0, 1])
            raise DataError(f"data.mixes.{tag}.count: {counts[tag]} mixed examples, more than the {n_user} user "
                            "examples of data.train (mixed examples replace user examples)")  # fmt: skip
    if sum(counts.values()) > n_user:
        parts = " + ".join(f"{k} ({tag})" for tag, k in counts.items() if k)
        raise DataError(f"data.mixes: {parts} = {sum(counts.values())} mixed examples, more than the {n_user} user "
                        "examples of data.train (mixed examples replace user examples)")  # fmt: skip
    return counts


def mix_examples(user: list[Example], mixes: Mapping[str, MixConfig],
                 pools: Mapping[str, list[Example]]) -> list[Example]:  # fmt: skip
    """`user` with, for each mix (in tag order), `mix_counts` seeded-random positions not yet replaced filled by
    examples of `pools[tag]` tagged `tag`; drawn without replacement when the pool is large enough, else with.

    The first mix draws exactly as the former `data.poison` did, so poisoned runs keep their training sets.
    """
    counts = mix_counts(mixes, len(user))
    out = [replace(e, tag=USER) if e.tag != USER else e for e in user]
    free = list(range(len(user)))
    for tag in sorted(mixes):
        k = counts[tag]
        if not k:
            continue
        pool = pools.get(tag)
        if not pool:
            raise DataError(f"data.mixes.{tag}.data: no examples to mix in, but {k} are asked for")
        rng = random.Random(mixes[tag].seed)
        positions = rng.sample(free, k)
        picks = rng.sample(pool, k) if k <= len(pool) else rng.choices(pool, k=k)
        for pos, e in zip(positions, picks, strict=True):
            out[pos] = replace(e, tag=tag)
        taken = set(positions)
        free = [i for i in free if i not in taken]
    return out

