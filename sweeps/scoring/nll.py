"""Mean negative log-likelihood of response tokens given prompts (the cheap loss axes of sweeps and landscapes)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sweeps.formatting import Encoded, collate
from sweeps.lm_loss import first_scored, forward_from, token_losses


@torch.no_grad()
def per_example_nll(model: nn.Module, data: Sequence[Encoded], *, pad_id: int, batch_size: int) -> list[float]:
    """Token-averaged NLL of each example's response (labels != IGNORE_INDEX).

    Only the logits that predict a response token are computed and scored (sweeps.lm_loss).

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
        first = first_scored(examples)
        losses, rows = token_losses(forward_from(model, batch, first).logits, batch["labels"], first)
        sums = torch.zeros(len(idx), dtype=losses.dtype, device=losses.device).index_add_(0, rows, losses)
        counts = torch.bincount(rows, minlength=len(idx))
        means = torch.where(counts > 0, sums / counts.clamp(min=1), float("nan")).tolist()
        for row, i in enumerate(idx):
            out[i] = means[row]
    if was_training:
        model.train()
    return out


def mean_nll(model: nn.Module, data: Sequence[Encoded], *, pad_id: int, batch_size: int) -> float:
    values = per_example_nll(model, data, pad_id=pad_id, batch_size=batch_size)
    return sum(values) / len(values) if values else float("nan")
