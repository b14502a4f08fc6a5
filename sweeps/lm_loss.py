"""Causal-LM forwards that project onto the vocabulary only where a response token is predicted.

Every loss here (the training loss, the NLL axes, EWC's Fisher, A-GEM's reference gradient, Refresh's ascent, DER's
logits) scores response tokens only, yet a plain `model(**batch)` projects every prompt and pad position onto the
vocabulary and runs the cross-entropy over all of them. For a 49k vocabulary that was about half of an NLL's time
(SmolLM2, py-spy). Here the projection starts at the batch's first position that predicts a response token
(`logits_to_keep`), and the cross-entropy runs on the gathered response rows. `forward_joined` runs a user batch and
a method's memory rows (DER's replay) as one forward, `joint_pays` says when that is cheaper than two.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sweeps.formatting import IGNORE_INDEX, Encoded, concat_batches

JOINT_MODES = ("auto", "always", "never")
JOINT_PADDING = 1.1  # `auto` joins while the joint batch's padded positions are at most this × the separate ones


def first_scored(examples: Sequence[Encoded]) -> int:
    """The first position whose logits predict a response token in any example (label j is predicted at j − 1),
    counted on the host; the last position when nothing is scored."""
    width = max(len(e.input_ids) for e in examples)
    firsts = (next((j - 1 for j in range(1, len(e.labels)) if e.labels[j] != IGNORE_INDEX), None) for e in examples)
    return min((f for f in firsts if f is not None), default=width - 1)


def first_scored_in(labels: torch.Tensor) -> int:
    """`first_scored` from a collated label tensor (one device→host sync; use `first_scored` where rows are at hand)."""
    scored = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero()
    return int(scored[0]) if len(scored) else labels.shape[1] - 1


_NO_LOGITS_TO_KEEP: set[type] = set()  # model classes whose forward refused `logits_to_keep` once


def forward_keeping(model: nn.Module, keep: int, **inputs: Any) -> Any:
    """`model(**inputs)` with logits for the last `keep` positions only (`.logits` sliced to them). A model class
    without `logits_to_keep` computes every position's logits; it is asked once, then remembered (a retried forward
    would rerun a wrapper's pre-forward, e.g. DDP's buffer broadcast)."""
    if type(model) not in _NO_LOGITS_TO_KEEP:
        try:
            outputs = model(**inputs, logits_to_keep=keep)
        except TypeError as e:
            if "logits_to_keep" not in str(e):
                raise
            _NO_LOGITS_TO_KEEP.add(type(model))
            outputs = model(**inputs)
    else:
        outputs = model(**inputs)
    outputs.logits = outputs.logits[:, -keep:]
    return outputs


def forward_from(model: nn.Module, batch: dict[str, torch.Tensor], first: int, **kwargs: Any) -> Any:
    """`model`'s outputs without its own loss, whose `.logits` cover positions first … width − 1 only."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return forward_keeping(model, batch["input_ids"].shape[1] - first, **inputs, **kwargs)


def token_losses(logits: torch.Tensor, labels: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy (fp32) of every scored response token and the batch row each belongs to, from
    `logits` of positions first … width − 1 (as `forward_from` returns them)."""
    targets = labels[:, first + 1 :]
    scored = targets != IGNORE_INDEX
    rows = torch.arange(len(labels), device=labels.device).unsqueeze(1).expand_as(targets)[scored]
    return F.cross_entropy(logits[:, :-1][scored].float(), targets[scored], reduction="none"), rows


def response_loss(model: nn.Module, batch: dict[str, torch.Tensor], first: int | None = None,
                  reduction: str = "mean", **kwargs: Any) -> tuple[torch.Tensor, Any]:  # fmt: skip
    """The response-token cross-entropy (`reduction` "mean", as `model(**batch).loss`, or "sum") and the outputs."""
    first = first_scored_in(batch["labels"]) if first is None else first
    outputs = forward_from(model, batch, first, **kwargs)
    losses, _ = token_losses(outputs.logits, batch["labels"], first)
    return (losses.sum() if reduction == "sum" else losses.mean()), outputs


def joint_pays(mode: str, batches: Sequence[dict[str, torch.Tensor]]) -> bool:
    """Whether to run `batches` as one forward (`mode` auto | always | never). `auto`: when padding every row to the
    widest adds at most 10 % positions. One forward + backward of a joint batch costs less than two: each pass has a
    fixed part (the embedding's dense gradient, the weight-gradient writes, the kernel launches). Measured on a 95M
    Llama, 2 CPU cores: batch 8 × 17 tokens 555 ms, 16 × 17 in one pass 948 ms, so ≈ 160 ms fixed and ≈ 2.9 ms per
    position: the padding eats the gain past ≈ 55 extra positions, 13 % of 8 × 17 + 8 × 35 (user + refusal rows)."""
    if mode != "auto":
        return mode == "always"
    shapes = [b["input_ids"].shape for b in batches]
    joint = sum(rows for rows, _ in shapes) * max(width for _, width in shapes)
    return joint <= JOINT_PADDING * sum(rows * width for rows, width in shapes)


def rows_of(outputs: Any, rows: slice) -> Any:
    """A shallow copy of `outputs` whose tensors (logits, hidden states, ...) keep these batch rows only."""
    out = copy.copy(outputs)
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            out[key] = value[rows]
        elif isinstance(value, tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
            out[key] = tuple(v[rows] for v in value)
    return out


def forward_joined(model: nn.Module, batch: dict[str, torch.Tensor], first: int,
                   riders: Sequence[dict[str, torch.Tensor]], pad_id: int, **kwargs: Any,
                   ) -> tuple[int, list[tuple[dict[str, torch.Tensor], Any]]]:  # fmt: skip
    """One forward of `batch` with every `riders` batch's rows appended (right-padded to one width; the vocabulary
    projection from the earliest scored position of all rows). Returns that position and, for `batch` and then each
    rider, its rows at the joint width and its rows' outputs (`.logits` from that position, as `forward_from`)."""
    parts = [batch, *riders]
    first = min(first, *(first_scored_in(r["labels"]) for r in riders))
    joined = concat_batches(parts, pad_id)
    outputs = forward_from(model, joined, first, **kwargs)
    bounds = itertools.accumulate((len(p["input_ids"]) for p in parts), initial=0)
    return first, [({k: v[a:b] for k, v in joined.items()}, rows_of(outputs, slice(a, b)))
                   for a, b in itertools.pairwise(bounds)]  # fmt: skip
