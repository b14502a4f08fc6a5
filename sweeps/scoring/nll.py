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

    An example with no scored token gets NaN, never 0 (0 would read as a perfectly predicted response, e.g. a
    perfectly "safe" refusal); `PromptFormatter.encode_pairs` drops such examples before they get here."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data[i].input_ids))  # less padding per batch
    out = [0.0] * len(data)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([data[i] for i in idx], pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        losses = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        counts = (targets != IGNORE_INDEX).sum(1)
        means = torch.where(counts > 0, losses.sum(1) / counts.clamp(min=1), float("nan")).tolist()
        for row, i in enumerate(idx):
            out[i] = means[row]
    if was_training:
        model.train()
    return out


def mean_nll(model: nn.Module, data: Sequence[Encoded], *, pad_id: int, batch_size: int) -> float:
    values = per_example_nll(model, data, pad_id=pad_id, batch_size=batch_size)
    return sum(values) / len(values) if values else float("nan")
