"""Several processes for one trial (`torchrun --nproc_per_node N -m sweeps.train ...`): torch.distributed's own
DDP or FSDP2 (`fully_shard`), never a hand-written gradient all-reduce.

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; everything here reads them, so one process without torchrun is the
world of size 1 and nothing changes. Every rank draws the same global batch (batch_size × world size) from the same
seeded generator and trains on its slice, so 2 × batch 4 sees exactly the examples of 1 × batch 8. Evaluation and
every file of the run dir are rank 0's; every rank leaves the process group after training (`leave`), then the
other ranks stop.

FSDP (`model.distributed=fsdp`, full fine-tuning): every decoder layer (the model's `_no_split_modules`) and the root
are sharded with `fully_shard` on a copy of the model that shares its parameters, so the trial's plain module keeps
its Parameter objects (the trial's Distance, the model pool) while its storage is freed for training; `gather()`
refills rank 0's plain module with the full weights after training. EMA runs on each rank's local shards. Only rank
0 reads the weights: the other ranks build the model on the meta device (`builds_on_meta`, no memory) and receive
their shards from rank 0 after `fully_shard`, so no host or device ever holds one full copy per rank.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import inspect
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

MODES = ("ddp", "fsdp")
# hooks whose terms are computed per rank outside DDP's forward/backward pair (a second backward, a data stream's
# own forward, gradient surgery before the all-reduce is complete): a method using one is refused under DDP
_UNSHARDABLE_HOOKS = ("before_step", "extra_loss", "after_user_backward", "step_loss", "after_backward")
# under FSDP each rank holds 1/N of every parameter: only methods acting elementwise on the trained parameters run
# (EMA, on the local shards); the others need full parameters (reference weights, a teacher, merges) and are refused
_FSDP_METHODS = ("sweeps.methods.ema.EMA",)


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


def builds_on_meta(model_cfg: Any) -> bool:
    """FSDP under torchrun, a rank other than 0: build the model on the meta device; its shards come from rank 0."""
    w = world()
    return w.active and not w.is_main and model_cfg.distributed == "fsdp"


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


def leave() -> None:
    """After training, on every rank: all leave the process group together (a barrier, which also waits for any
    collective still pending, then destroy), and rank 0 evaluates without one. A rank that tore its connections
    down alone while rank 0 still held them was once aborted by gloo ("terminate called without an active
    exception"); PyTorch's shutdown notes ask for destroy_process_group on every rank at one point for that reason."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        teardown()
        log.info("rank %d left the process group after training", world().rank)


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


def wrap(model: nn.Module, w: World, mode: str = "ddp") -> nn.Module:
    """The module to train through: DDP, or FSDP2's sharded copy (`mode` fsdp); the model itself at size 1."""
    if not w.active:
        return model
    if mode == "fsdp":
        return _fully_shard(model, w)
    device = next(model.parameters()).device
    ids = [device.index if device.index is not None else w.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(trained: nn.Module) -> nn.Module:
    """The module whose parameters train (the optimiser's and the methods'): the model, or FSDP's sharded copy."""
    return trained.module if isinstance(trained, nn.parallel.DistributedDataParallel) else trained


def _fully_shard(model: nn.Module, w: World) -> nn.Module:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    meta = any(p.is_meta for p in model.parameters())  # builds_on_meta: this rank has no weights of its own
    # nccl: init() made cuda:LOCAL_RANK current; the mesh on the trial's device type, as fully_shard's default is the
    # accelerator even for a model.device=cpu trial
    nccl = torch.distributed.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    if not meta:
        device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (w.size,))
    full_weights = model.state_dict() if w.is_main else {}  # rank 0's, broadcast into every rank's shards below
    # the copy shares the Parameter objects (deepcopy's memo), so it costs only the buffers; fully_shard then swaps
    # its parameters for sharded DTensors (a copy of this rank's slice) and the plain module's full storage is freed
    sharded = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    names = set(getattr(model, "_no_split_modules", None) or ())  # HF's decoder-layer classes (accelerate's wrap)
    layers = [m for m in sharded.modules() if type(m).__name__ in names]
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)  # the root: embeddings, final norm, head (tied weights stay in one group)
    if meta:
        sharded.to_empty(device=device)  # storage for this rank's shards (and the buffers), filled next
    # each full tensor is broadcast from rank 0 once, every rank keeps its slice (torch.distributed.checkpoint)
    set_model_state_dict(sharded, full_weights,
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))  # fmt: skip
    del full_weights
    with torch.no_grad():
        for b in sharded.buffers():  # unsharded; non-persistent ones (rotary inv_freq) are in no state dict
            torch.distributed.broadcast(b, src=0)
    full = sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    held = sum(p.to_local().numel() for p in sharded.parameters())
    how = " (built on the meta device, shards from rank 0)" if meta else ""
    log.info("fsdp: %d decoder layers + root sharded over %d ranks; this rank holds %d of %d parameter values%s",
             len(layers), w.size, held, full, how)  # fmt: skip
    return sharded


def shard_methods(methods: Any, trained: nn.Module) -> None:
    """FSDP: point EMA at each rank's local shards, after its setup() (DTensor has no foreach copy; the local shard
    is the parameter's own storage, which the optimiser updates in place)."""
    if not _is_fsdp(trained):
        return
    from sweeps.methods.ema import EMA

    for m in methods.methods:
        if isinstance(m, EMA):
            m.params = [p.detach().to_local() for p in m.params]
            m.shadow = [s.to_local() for s in m.shadow]


def gather(trained: nn.Module, model: nn.Module, methods: Any) -> None:
    """FSDP, after training: the full weights and EMA averages into rank 0's plain `model` (called on every rank:
    all-gathers). Cost: rank 0 ends up holding the full model (and a full fp32 average) on its device for the
    evaluation, which runs at one device's speed; the weights pass through the host once (cpu_offload)."""
    if not _is_fsdp(trained):
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    from sweeps.methods.ema import EMA

    main = world().is_main
    full = get_model_state_dict(trained, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if main:
        for name, p in model.named_parameters():
            p.data = full[name].to(p.device)
    plain = dict(model.named_parameters())
    sharded = dict(trained.named_parameters())
    for m in methods.methods:
        if isinstance(m, EMA):
            shadow = [DTensor.from_local(s, sharded[n].device_mesh, sharded[n].placements, shape=sharded[n].shape,
                                         stride=sharded[n].stride()).full_tensor()
                      for n, s in zip(m.names, m.shadow, strict=True)]  # fmt: skip
            m.params, m.shadow = ([plain[n] for n in m.names], shadow) if main else ([], [])


def _is_fsdp(trained: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(trained, FSDPModule)


def local(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor of a scalar that may be a replicated DTensor (the total grad norm of FSDP's gradients)."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def no_sync(trained: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP's no_sync for every micro-batch but the step's last: one gradient all-reduce per optimiser step."""
    if last or not isinstance(trained, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return trained.no_sync()


def distributed_errors(cfg: Any, w: World | None = None, nproc_key: str = "nproc_per_node") -> list[str]:
    """Combinations several processes cannot run correctly, one line each naming the key (checked on every rank
    before any model is loaded, so nothing trains; and by the sweeper for launch=torchrun, whose key for the number of
    processes is `nproc_key`)."""
    from sweeps.methods._base import resolve

    w = w or world()
    m = cfg.model
    errors = []
    if m.distributed not in MODES:
        errors.append(f"model.distributed: '{m.distributed}' is not one of {list(MODES)}")
    if m.distributed == "fsdp" and m.lora.enabled:
        errors.append("model.distributed: fsdp shards full fine-tuning only; with model.lora.enabled use ddp "
                      "(the adapters are small, DDP replicates them)")  # fmt: skip
    if not w.active:
        return errors
    local = int(os.environ.get("LOCAL_WORLD_SIZE", w.size))
    if m.device.startswith("cuda") or (m.device == "auto" and torch.cuda.is_available()):
        if m.device not in ("auto", "cuda"):
            errors.append(f"model.device: '{m.device}' under torchrun; use auto or cuda (rank r takes cuda:LOCAL_RANK)")
        if local > torch.cuda.device_count():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            shown = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
            errors.append(f"{nproc_key}: {local} processes on this node but {torch.cuda.device_count()} CUDA "
                          f"device(s){shown}")  # fmt: skip
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
        if m.distributed == "fsdp" and f"{cls.__module__}.{cls.__qualname__}" not in _FSDP_METHODS:
            errors.append(f"method.{key}: {cls.__name__} does not support model.distributed=fsdp (it needs the full "
                          "parameters on every rank); use model.distributed=ddp")  # fmt: skip
        elif cls.streams or hooks:
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
