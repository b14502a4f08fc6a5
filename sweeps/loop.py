"""The training loop: one function, read top to bottom.

Why our own loop rather than an HF Trainer subclass: the whole step fits on one screen, methods plug in at fixed
hook points (see sweeps.methods), divergence ends the run with a status instead of an exception, and there is no
hidden state (logging integrations, checkpoint rotation, accelerate wrappers) between the recipe and the numbers.

Order per optimiser step (never changes): collate the step's micro-batches → before_step → riders → for each
micro-batch: forward → loss (+ extra_loss, + the riders' ride_loss on the last) → backward → after_user_backward →
step_loss backward → after_backward → grad norm and clip → finite check → step → zero_grad → after_step → log. After
the last step: finalize. A rider is a method's memory batch appended to the last micro-batch's forward (DER's
replay): one forward and one backward instead of two, the same gradient (the rows' losses are summed either way).

Gradient accumulation is token-weighted (as transformers ≥ 4.46 does): each micro-batch's mean loss is scaled by its
share of the step's response tokens, so batch 16 and batch 4 × 4 on the same examples give the same gradient. The
token counts come from the host-side labels: no extra device sync. The loss projects onto the vocabulary only from
each micro-batch's first response position (sweeps.lm_loss), found on the host too.

Under torchrun (sweeps.distributed) every rank draws the same global batch of batch_size × world size and trains on
its slice through DDP; each rank's loss is weighted by its share of the GLOBAL step's response tokens (known on
every rank from the global batch, no communication) times the world size, which DDP's gradient average cancels.
The gradient is all-reduced once per step (no_sync on the other micro-batches); the logged loss is the ranks' mean.
Under FSDP (`sharding="fsdp"`) the same loop trains the sharded copy: its gradients are reduce-scattered (averaged
like DDP's) on every micro-batch, the grad norm and clipping act on the DTensor gradients (one global norm), the
methods see the sharded copy, and `distributed.gather` hands rank 0's `model` the full weights at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from sweeps import distributed
from sweeps.config import OptimConfig
from sweeps.formatting import Encoded, collate, response_tokens
from sweeps.lm_loss import first_scored, forward_joined, response_loss, token_losses
from sweeps.methods import MethodStack, TrainingMethod
from sweeps.methods._context import Resources, TrainingContext

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


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless seeded reshuffles of range(n); each epoch's tail is carried into the next so every batch is full."""
    buffer: list[int] = []
    while True:
        for i in torch.randperm(n, generator=generator).tolist():
            buffer.append(i)
            if len(buffer) == batch_size:
                yield buffer
                buffer = []


def _source_tokens(data: Sequence[Encoded], sources: Sequence[str] | None,
                   picked: list[list[int]]) -> dict[str, int]:  # fmt: skip
    """This step's response tokens per data source (every source of the training set, zeros included)."""
    if sources is None:
        return {}
    out = dict.fromkeys(sources, 0)
    for i in (i for b in picked for i in b):
        out[sources[i]] += response_tokens([data[i]])
    return out


Batch = dict[str, torch.Tensor]


def _forward(trained: nn.Module, batch: Batch, first: int, riders: Sequence[tuple[TrainingMethod, Batch]], pad_id: int,
             forward_kwargs: dict) -> tuple[torch.Tensor, Batch, Any, torch.Tensor | None]:  # fmt: skip
    """A micro-batch's summed response cross-entropy, the batch and outputs its extra_loss sees, and the riders' terms
    (None without riders). With riders, their rows join this forward (sweeps.lm_loss.forward_joined): `batch` comes
    back at the joint width, `outputs` its rows only."""
    if not riders:
        loss, outputs = response_loss(trained, batch, first, reduction="sum", **forward_kwargs)
        return loss, batch, outputs, None
    first, ((batch, outputs), *parts) = forward_joined(trained, batch, first, [rows for _, rows in riders], pad_id,
                                                       **forward_kwargs)  # fmt: skip
    terms = [t for (method, _), (rows, out) in zip(riders, parts, strict=True)
             if (t := method.ride_loss(rows, out, first)) is not None]  # fmt: skip
    loss = token_losses(outputs.logits, batch["labels"], first)[0].sum()
    return loss, batch, outputs, torch.stack(terms).sum() if terms else None


def total_steps(n_examples: int, optim: OptimConfig, world_size: int = 1) -> int:
    if optim.max_steps is not None:
        return optim.max_steps
    return max(1, math.ceil(optim.epochs * n_examples / (optim.batch_size * optim.grad_accum * world_size)))


def build_optimizer(params: list[nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    # torch's fused AdamW (one pass over each tensor, no temporaries) on plain CPU and CUDA tensors: on CPU torch
    # otherwise takes its per-tensor for-loop, 5× slower (bench/bench_optimizer.py); FSDP's DTensor shards and other
    # devices keep torch's default
    plain = all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay,
                             fused=plain or None)  # fmt: skip


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
    resources: Resources | None = None,
    log_path: str | Path | None = None,
    sources: Sequence[str] | None = None,
    sharding: str = "ddp",
) -> TrainResult:
    """Fine-tune `model` in place. `on_step(step, loss)` may return True to stop early (pruning).

    `precision` (sweeps.models.resolve_precision): forward and loss under its autocast, fp16 through a GradScaler
    (None runs the model in its own dtype); `resources` feeds the methods' data streams and reference weights;
    `log_path` gets one JSON line per step (pass it on rank 0 only); `sources` tags each example with its data source
    (sweeps.data.mix_examples: user or a data mix), and the log counts each step's response tokens per tag;
    `sharding`: ddp or fsdp under torchrun.
    """
    if not data:
        raise ValueError("no training examples")
    if sources is not None and len(sources) != len(data):
        raise ValueError(f"{len(sources)} sources for {len(data)} training examples")
    world = distributed.world()
    trained = distributed.wrap(model, world, sharding)  # what forward goes through
    module = distributed.unwrap(trained)  # whose parameters train: `model`, or FSDP's sharded copy of it
    device = next(module.parameters()).device  # the shards' (FSDP ranks > 0 built `model` on the meta device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, optim)
    n_steps = total_steps(len(data), optim, world.size)
    schedule = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[optim.scheduler]
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=optim.warmup_steps, num_training_steps=n_steps)
    generator = torch.Generator().manual_seed(seed)
    batches = _batches(len(data), optim.batch_size * world.size, generator)  # the global batch; each rank takes a slice
    ctx = TrainingContext(module, optimizer, total_steps=n_steps, grad_accum=optim.grad_accum,
                          batch_size=optim.batch_size, pad_id=pad_id, resources=resources,
                          n_examples=len(data))  # fmt: skip
    methods.setup(ctx)  # in the caller's mode (eval: no dropout in statistics taken at θ_aligned)
    distributed.shard_methods(methods, trained)
    ctx.frozen = True
    module.train()
    forward_kwargs = {"output_hidden_states": True} if ctx.hidden else {}
    scaler = precision.grad_scaler() if precision is not None else None
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    train_log = open(log_path, "w") if log_path is not None else None  # noqa: SIM115 (closed below)

    result = TrainResult("completed", 0, optim.batch_size * optim.grad_accum * world.size, 0, 0.0, None)
    served = {k: s.tokens for k, s in ctx.streams.items()}
    start = time.perf_counter()
    bar = tqdm(range(1, n_steps + 1), desc="train", disable=not progress, leave=False)
    try:
        for step in bar:
            picked = [next(batches) for _ in range(optim.grad_accum)]
            global_rows = [[data[i] for i in b] for b in picked]
            step_tokens = sum(response_tokens(r) for r in global_rows)
            n_tokens = max(1, step_tokens) / world.size  # DDP averages over ranks: its mean of the shares is the sum
            rows = [distributed.shard(r, world) for r in global_rows]
            firsts = [first_scored(r) for r in rows]  # where each micro-batch's vocabulary projection starts
            micro = [collate(r, pad_id, device) for r in rows]
            lr = scheduler.get_last_lr()[0]
            methods.before_step(step, micro)
            riders = methods.riders()  # memory rows that join the last micro-batch's forward (DER's replay)
            step_loss = torch.zeros((), device=device)
            for i, (batch, first) in enumerate(zip(micro, firsts, strict=True)):
                last = i == len(micro) - 1
                with distributed.no_sync(trained, last=last):  # forward and backward inside
                    with autocast():
                        loss, batch, outputs, ridden = _forward(trained, batch, first, riders if last else [],
                                                                pad_id, forward_kwargs)  # fmt: skip
                        loss = loss / n_tokens
                        term = methods.extra_loss(module, batch, outputs)
                        if term is not None:
                            loss = loss + term / optim.grad_accum
                        if ridden is not None:
                            loss = loss + ridden
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                step_loss += loss.detach()
            methods.after_user_backward(module)
            term = methods.step_loss(module)
            if term is not None:
                (scaler.scale(term) if scaler is not None else term).backward()
                step_loss += term.detach()
            step_loss = distributed.mean(step_loss)
            result.train_tokens += step_tokens
            if scaler is not None:
                scaler.unscale_(optimizer)  # methods and clipping see the true gradients
            methods.after_backward(module)
            grads = [p.grad for p in params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
            terms = methods.step_log()
            values = torch.stack([step_loss.float(), distributed.local(grad_norm).float().to(step_loss.device),
                                  *[torch.as_tensor(v, dtype=torch.float32, device=step_loss.device)
                                    for v in terms.values()]]).tolist()  # one host sync per optimiser step
            loss_value, norm_value = values[0], values[1]
            # under fp16 a non-finite gradient is an overflow the scaler skips (and shrinks its scale), not divergence
            if not math.isfinite(loss_value) or (scaler is None and not math.isfinite(norm_value)):
                result.status, result.diverged_at = "diverged", step
                log.warning("loss %s, grad norm %s at step %d: run diverged", loss_value, norm_value, step)
                optimizer.zero_grad(set_to_none=True)
                break
            if optim.grad_clip is not None and math.isfinite(norm_value):
                torch.nn.utils.clip_grads_with_norm_(grads, optim.grad_clip, grad_norm)
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
            if train_log is not None:
                tokens = {"train": step_tokens, **_source_tokens(data, sources, picked),
                          **{k: s.tokens - served[k] for k, s in ctx.streams.items()}}  # fmt: skip
                served = {k: s.tokens for k, s in ctx.streams.items()}
                line = {"step": step, "loss": loss_value, "grad_norm": norm_value, "lr": lr, "tokens": tokens,
                        **dict(zip(terms, values[2:], strict=True))}  # fmt: skip
                train_log.write(json.dumps(line) + "\n")
                train_log.flush()
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if on_step is not None and on_step(step, loss_value):
                break
        else:
            methods.finalize()  # ran to the last step: post-hoc merges happen before anything is evaluated
        distributed.gather(trained, model, methods)  # FSDP: rank 0's plain model gets the full weights back
    finally:
        bar.close()
        if train_log is not None:
            train_log.close()
        del trained, module  # DDP's hooks / FSDP's shards go with it: evaluation and later trials use `model`
    model.eval()
    result.train_time_s = time.perf_counter() - start
    return result
