"""Several processes for one trial (`torchrun --nproc_per_node N -m sweeps.train ...`): torch.distributed's own
DDP, never a hand-written gradient all-reduce.

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; everything here reads them, so one process without torchrun is the
world of size 1 and nothing changes. Every rank draws the same global batch (batch_size × world size) from the same
seeded generator and trains on its slice, so 2 × batch 4 sees exactly the examples of 1 × batch 8. Evaluation and
every file of the run dir are rank 0's; the other ranks stop after training.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MODES = ("ddp", "fsdp")
# hooks whose terms are computed per rank outside DDP's forward/backward pair (a second backward, a data stream's
# own forward, gradient surgery before the all-reduce is complete): a method using one is refused under DDP
_UNSHARDABLE_HOOKS = ("before_step", "extra_loss", "step_loss", "after_backward")


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place, from torchrun's environment (size 1 without it)."""
    env = os.environ
    return World(int(env.get("WORLD_SIZE", 1)), int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)))


def init(device: str = "auto") -> World:
    """Join the process group (gloo on CPU, nccl on CUDA; CUDA ranks take cuda:LOCAL_RANK). No-op without torchrun."""
    w = world()
    if not w.active or torch.distributed.is_initialized():
        return w
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(w.local_rank)  # "cuda" (model.device auto/cuda) now means this rank's GPU
    # a rank-0 evaluation can take long; the others do not wait for it, so the default timeout is only for training
    torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return w


def teardown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def broadcast(value: Any) -> Any:
    """Rank 0's value on every rank (e.g. the run dir, whose Hydra timestamp may differ by a second across ranks)."""
    if not torch.distributed.is_initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def mean(value: torch.Tensor) -> torch.Tensor:
    """Average of a scalar over the ranks (the logged loss); the value itself without a process group."""
    if not torch.distributed.is_initialized():
        return value
    out = value.detach().clone()
    torch.distributed.all_reduce(out)  # SUM: gloo has no AVG
    return out / torch.distributed.get_world_size()


def shard(rows: list, w: World) -> list:
    """This rank's contiguous slice of a global batch of len(rows) = per-device batch × world size."""
    per = len(rows) // w.size
    return rows[w.rank * per:(w.rank + 1) * per]


def wrap(model: nn.Module, w: World) -> nn.Module:
    """The module to train through: DDP; the model itself at size 1."""
    if not w.active:
        return model
    device = next(model.parameters()).device
    ids = [device.index if device.index is not None else w.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def no_sync(trained: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP's no_sync for every micro-batch but the step's last: one gradient all-reduce per optimiser step."""
    if last or not isinstance(trained, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return trained.no_sync()


def distributed_errors(cfg: Any, w: World | None = None) -> list[str]:
    """Combinations several processes cannot run correctly, one line each naming the key (checked on every rank
    before any model is loaded, so nothing trains)."""
    from sweeps.methods._base import resolve

    w = w or world()
    m = cfg.model
    errors = []
    if m.distributed not in MODES:
        errors.append(f"model.distributed: '{m.distributed}' is not one of {list(MODES)}")
    if m.distributed == "fsdp" and m.lora.enabled:
        errors.append("model.distributed: fsdp shards full fine-tuning only; with model.lora.enabled use ddp "
                      "(the adapters are small, DDP replicates them)")  # fmt: skip
    elif m.distributed == "fsdp":
        # not yet: rank 0's evaluation needs the sharded weights gathered into a plain module first
        errors.append("model.distributed: fsdp is not supported yet (evaluation needs the gathered weights); use ddp")
    if not w.active:
        return errors
    local = int(os.environ.get("LOCAL_WORLD_SIZE", w.size))
    if m.device.startswith("cuda") or (m.device == "auto" and torch.cuda.is_available()):
        if m.device not in ("auto", "cuda"):
            errors.append(f"model.device: '{m.device}' under torchrun; use auto or cuda (rank r takes cuda:LOCAL_RANK)")
        if local > torch.cuda.device_count():
            errors.append(f"nproc_per_node: {local} processes on this node but {torch.cuda.device_count()} CUDA "
                          "device(s)")  # fmt: skip
    if cfg.trial.check_every:
        errors.append("trial.check_every: intermediate checks run on one process and cannot stop the others; "
                      "use 0 under torchrun")  # fmt: skip
    for key, entry in (cfg.method or {}).items():
        try:
            cls = resolve(str(dict(entry or {}).get("_target_")))
        except (ImportError, AttributeError, TypeError, ValueError):
            continue  # known_method_errors names the target
        from sweeps.methods import TrainingMethod

        hooks = [h for h in _UNSHARDABLE_HOOKS if _overrides(cls, TrainingMethod, h)]
        if cls.streams or hooks:
            why = f"its data stream ({', '.join(cls.streams)})" if cls.streams else f"its {hooks[0]} hook"
            errors.append(f"method.{key}: {cls.__name__} does not support several processes ({why} is not sharded); "
                          "run it without torchrun")  # fmt: skip
    return errors


def _overrides(cls: type, base: type, name: str) -> bool:
    return inspect.getattr_static(cls, name) is not inspect.getattr_static(base, name)


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[World]:
    """init() … teardown() around one trial."""
    w = init(device)
    try:
        yield w
    finally:
        teardown()
