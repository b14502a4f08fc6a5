"""The training loop: one function, read top to bottom.

Why our own loop rather than an HF Trainer subclass: the whole step fits on one screen, methods plug in at fixed
hook points (see sweeps.methods), divergence ends the run with a status instead of an exception, and there is no
hidden state (logging integrations, checkpoint rotation, accelerate wrappers) between the recipe and the numbers.

Order per optimiser step (never changes): set lr → for each micro-batch: prepare_batch → forward → loss
(+ method penalties) → backward/accum → finite check → after_backward → clip → step → zero_grad → after_step → log.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from sweeps.config import OptimConfig
from sweeps.formatting import IGNORE_INDEX, Encoded
from sweeps.methods import MethodStack

if TYPE_CHECKING:
    from sweeps.models import Precision

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    status: str  # "completed" | "diverged"
    steps: int
    effective_batch_size: int
    train_tokens: int
    train_time_s: float
    final_loss: float | None
    losses: list[float] = field(default_factory=list)
    diverged_at: int | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.train_time_s if self.train_time_s > 0 else 0.0


def collate(examples: Sequence[Encoded], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padded positions are masked and ignored by the loss."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _batches(data: Sequence[Encoded], batch_size: int, generator: torch.Generator) -> Iterator[list[Encoded]]:
    """Endless seeded reshuffles; each epoch's tail is carried into the next so every batch is full."""
    buffer: list[Encoded] = []
    while True:
        for i in torch.randperm(len(data), generator=generator).tolist():
            buffer.append(data[i])
            if len(buffer) == batch_size:
                yield buffer
                buffer = []


def total_steps(n_examples: int, optim: OptimConfig) -> int:
    if optim.max_steps is not None:
        return optim.max_steps
    return max(1, math.ceil(optim.epochs * n_examples / (optim.batch_size * optim.grad_accum)))


def build_optimizer(params: list[nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


def train(
    model: nn.Module,
    data: Sequence[Encoded],
    optim: OptimConfig,
    methods: MethodStack,
    *,
    pad_id: int,
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[int, float], bool | None] | None = None,
    precision: Precision | None = None,
) -> TrainResult:
    """Fine-tune `model` in place. `on_step(step, loss)` may return True to stop early (pruning).

    `precision` (sweeps.models.resolve_precision): forward and loss under its autocast, fp16 through a GradScaler;
    None runs the model in its own dtype."""
    if not data:
        raise ValueError("no training examples")
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, optim)
    n_steps = total_steps(len(data), optim)
    schedule = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[optim.scheduler]
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=optim.warmup_steps, num_training_steps=n_steps)
    generator = torch.Generator().manual_seed(seed)
    batches = _batches(data, optim.batch_size, generator)
    methods.setup(model, optimizer)
    scaler = precision.grad_scaler() if precision is not None else None

    result = TrainResult("completed", 0, optim.batch_size * optim.grad_accum, 0, 0.0, None)
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(1, n_steps + 1), desc="train", disable=not progress, leave=False)
    for step in bar:
        step_loss = torch.zeros((), device=device)
        for _ in range(optim.grad_accum):
            batch = methods.prepare_batch(collate(next(batches), pad_id, device))
            with precision.autocast() if precision is not None else contextlib.nullcontext():
                outputs = model(**batch)
                loss = outputs.loss
                penalty = methods.extra_loss(model, batch, outputs)
                if penalty is not None:
                    loss = loss + penalty
            scaled = loss / optim.grad_accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            step_loss += loss.detach() / optim.grad_accum
            result.train_tokens += int((batch["labels"] != IGNORE_INDEX).sum())
        loss_value = float(step_loss)  # one host sync per optimiser step
        if not math.isfinite(loss_value):
            result.status, result.diverged_at = "diverged", step
            log.warning("loss is %s at step %d: run diverged", loss_value, step)
            optimizer.zero_grad(set_to_none=True)
            break
        if scaler is not None:
            scaler.unscale_(optimizer)  # methods and clipping see the true gradients
        methods.after_backward(model)
        if optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)  # skipped when fp16 gradients overflowed; the scale then shrinks
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        methods.after_step(step)
        result.steps, result.final_loss = step, loss_value
        result.losses.append(loss_value)
        bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
        if on_step is not None and on_step(step, loss_value):
            break
    bar.close()
    model.eval()
    result.train_time_s = time.perf_counter() - start
    return result
