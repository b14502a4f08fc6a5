"""The hook interface every training method (EMA, EWC, LwF, A-GEM, DER, Lisa, ...) implements.

`sweeps.loop.train` owns zero_grad / backward / clip / step and calls the hooks at fixed points, in this order:

    setup(model, optimizer)                  once, before the first step (snapshot θ₀, Fisher, teacher, buffers)
    per micro-batch:
        prepare_batch(batch) -> batch        may replace or extend the batch (replay)
        extra_loss(model, batch, outputs)    a penalty added to the task loss, or None
    after_backward(model)                    once per optimiser step, before clipping (gradient projection)
    after_step(step)                         after optimizer.step(); `step` counts from 1 (EMA update)
    eval_weights()                           context manager: the weights to evaluate are live inside it

Every hook does nothing by default, so a method overrides only what it needs.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn


class TrainingMethod:
    name: ClassVar[str] = "method"

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called once before training; may snapshot anything it needs from the starting model."""

    def prepare_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch

    def extra_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor | None:
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Gradients are complete (all micro-batches) and not yet clipped; may modify `.grad` in place."""

    def after_step(self, step: int) -> None:
        """The optimiser has just applied update number `step` (1-based)."""

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        yield

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what state_dict() returned (after setup())."""

    def metrics(self) -> dict[str, float]:
        return {}

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        """Value errors for these constructor arguments (one line each, naming the argument)."""
        return []


class MethodStack(TrainingMethod):
    """Runs several methods in config order; eval_weights nests them (first listed is outermost)."""

    name = "stack"

    def __init__(self, methods: list[TrainingMethod]) -> None:
        self.methods = methods

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for m in self.methods:
            m.setup(model, optimizer)

    def prepare_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for m in self.methods:
            batch = m.prepare_batch(batch)
        return batch

    def extra_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor | None:
        terms = [t for m in self.methods if (t := m.extra_loss(model, batch, outputs)) is not None]
        return torch.stack(terms).sum() if terms else None

    def after_backward(self, model: nn.Module) -> None:
        for m in self.methods:
            m.after_backward(model)

    def after_step(self, step: int) -> None:
        for m in self.methods:
            m.after_step(step)

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for m in self.methods:
                stack.enter_context(m.eval_weights())
            yield

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{m.name}.{k}": v for m in self.methods for k, v in m.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for m in self.methods:
            prefix = f"{m.name}."
            m.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})

    def metrics(self) -> dict[str, float]:
        return {f"{m.name}/{k}": v for m in self.methods for k, v in m.metrics().items()}

    @property
    def swaps_eval_weights(self) -> bool:
        return any(type(m).eval_weights is not TrainingMethod.eval_weights for m in self.methods)


def _resolve(target: str) -> type[TrainingMethod]:
    import importlib

    module, _, attr = target.rpartition(".")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, TrainingMethod)):
        raise TypeError(f"{target} is not a TrainingMethod")
    return cls


def known_method_errors(method_cfg: dict[str, Any]) -> list[str]:
    """Check every `method.<name>` entry before anything is built: target, argument names, argument values."""
    errors: list[str] = []
    for key, entry in (method_cfg or {}).items():
        entry = dict(entry or {})
        target = entry.pop("_target_", None)
        if not target:
            errors.append(f"method.{key}._target_: missing")
            continue
        try:
            cls = _resolve(target)
        except (ImportError, AttributeError, TypeError, ValueError) as e:
            errors.append(f"method.{key}._target_: cannot use '{target}' ({e})")
            continue
        try:
            inspect.signature(cls).bind(**entry)
        except TypeError as e:
            errors.append(f"method.{key}: {e}")
            continue
        errors.extend(f"method.{key}.{msg}" for msg in cls.check_args(entry))
    return errors


def build_methods(method_cfg: dict[str, Any]) -> MethodStack:
    methods = []
    for entry in (method_cfg or {}).values():
        entry = dict(entry or {})
        methods.append(_resolve(entry.pop("_target_"))(**entry))
    return MethodStack(methods)
