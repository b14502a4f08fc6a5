"""Mean negative log-likelihood of response tokens given prompts (the cheap loss axes of sweeps and landscapes)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sweeps.formatting import IGNORE_INDEX, Encoded, collate


@torch.no_grad()
def per_example_nll(model: nn.Module, data: Sequence[Encoded], *, pad_id: int, batch_size: int) -> list[float]:
    """Token-averaged NLL of each example's response (labels != IGNORE_INDEX).

    Only the logits that predict a response token are computed and scored: positions before the batch's first
    response token skip the vocabulary projection (`logits_to_keep`), and the cross-entropy runs on the gathered
    response rows (contiguous) instead of every prompt and pad position — for a 49k vocabulary that was about half of
    the NLL's time (SmolLM2, measured with py-spy on a trial check).

    An example with no scored token gets NaN, never 0 (0 would read as a perfectly predicted response, e.g. a
    perfectly "safe" refusal); `PromptFormatter.encode_pairs` drops such examples before they get here."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data[i].input_ids))  # less padding per batch
    out = [0.0] * len(data)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        examples = [data[i] for i in idx]
        batch = collate(examples, pad_id, device)
        width = batch["input_ids"].shape[1]
        # counted on the host: the first position whose logits predict a response token, in any row of the batch
        first = min((f for e in examples if (f := _first_position(e)) is not None), default=width - 1)
        logits = _logits(model, batch, keep=width - first)[:, :-1]  # positions first … width − 2
        targets = batch["labels"][:, first + 1 :]
        scored = targets != IGNORE_INDEX
        rows = torch.arange(len(idx), device=targets.device).unsqueeze(1).expand_as(targets)[scored]
        losses = F.cross_entropy(logits[scored].float(), targets[scored], reduction="none")
        sums = torch.zeros(len(idx), dtype=losses.dtype, device=losses.device).index_add_(0, rows, losses)
        counts = scored.sum(1)
        means = torch.where(counts > 0, sums / counts.clamp(min=1), float("nan")).tolist()
        for row, i in enumerate(idx):
            out[i] = means[row]
    if was_training:
        model.train()
    return out


def _first_position(example: Encoded) -> int | None:
    """The first position whose logits predict a scored label (label j is predicted at j − 1; None: none scored)."""
    return next((j - 1 for j in range(1, len(example.labels)) if example.labels[j] != IGNORE_INDEX), None)


def _logits(model: nn.Module, batch: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
    """The logits of the last `keep` positions (keep ≥ 1; a model class without `logits_to_keep` computes them all)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    try:
        return model(**inputs, logits_to_keep=keep).logits[:, -keep:]
    except TypeError:
        return model(**inputs).logits[:, -keep:]


def mean_nll(model: nn.Module, data: Sequence[Encoded], *, pad_id: int, batch_size: int) -> float:
    values = per_example_nll(model, data, pad_id=pad_id, batch_size=batch_size)
    return sum(values) / len(values) if values else float("nan")
