"""Move a model to θ_centre + α·d₁ + β·d₂ in place, and always come back.

Every point is computed from the stored centre (no accumulated drift from walking the grid), with fused foreach
kernels: one copy and one or two scaled adds over all perturbed tensors. `Perturbation` is a context manager:
weights and requires_grad flags are restored on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Perturbation:
    def __init__(self, params: Sequence[tuple[str, nn.Parameter]], directions: Sequence[Sequence[torch.Tensor]]):
        self.names = [n for n, _ in params]
        self.params = [p for _, p in params]
        self.directions = [list(d) for d in directions]
        for d in self.directions:
            if len(d) != len(self.params):
                raise ValueError("each direction needs one tensor per perturbed parameter")
        self._centre: list[torch.Tensor] | None = None
        self._grad_flags: list[bool] = []

    def __enter__(self) -> Perturbation:
        self._centre = [p.detach().clone() for p in self.params]
        self._grad_flags = [p.requires_grad for p in self.params]
        return self

    @torch.no_grad()
    def set(self, *coords: float) -> None:
        """Weights ← centre + Σ coords[k]·directions[k] (from scratch)."""
        if self._centre is None:
            raise RuntimeError("use Perturbation as a context manager")
        if len(coords) != len(self.directions):
            raise ValueError(f"expected {len(self.directions)} coordinates, got {len(coords)}")
        live = [p.data for p in self.params]
        torch._foreach_copy_(live, self._centre)
        for c, d in zip(coords, self.directions, strict=True):
            if c != 0:
                torch._foreach_add_(live, d, alpha=float(c))

    @torch.no_grad()
    def __exit__(self, *exc: object) -> None:
        if self._centre is not None:
            torch._foreach_copy_([p.data for p in self.params], self._centre)
        for p, flag in zip(self.params, self._grad_flags, strict=True):
            p.requires_grad_(flag)
        self._centre = None


def checksum(model: nn.Module) -> float:
    """A cheap fingerprint of every weight (for restore checks)."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(model.parameters())))
