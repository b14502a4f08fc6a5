"""Random directions in weight space: seeded per parameter name, normalised, optionally orthogonalised.

A direction is regenerated from (seed, parameter name) — nothing dense is stored on disk — so a landscape is
reproducible from its manifest alone, and adding or excluding one tensor does not change the others.

Normalisation (d: the direction's tensor for weight W):
  filter  each output row ("filter") i: d_i ← d_i · ‖W_i‖ / ‖d_i‖   (Li et al. 2018; 1-D tensors as one filter)
  layer   the whole tensor:            d ← d · ‖W‖ / ‖d‖            (llm-landscape)
  none    unchanged (unit Gaussian entries)
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

NORMALISATIONS = ("filter", "layer", "none")
DEFAULT_EXCLUDE = r"(norm|bias)"  # norms and biases stay fixed (loss-landscape's `biasbn`, llm-landscape zeroes norms)


@dataclass
class Scope:
    include: str | None = None  # regex: only matching parameter names
    exclude: str | None = DEFAULT_EXCLUDE
    embeddings: bool = True  # perturb input embeddings (llm-landscape does)
    lm_head: bool = True  # perturb the output head (tied heads follow the embeddings)
    lora_only: bool = False  # only LoRA adapter weights (a fine-tuned adapter's subspace)


def select_parameters(model: nn.Module, scope: Scope) -> list[tuple[str, nn.Parameter]]:
    """Parameters to perturb, in model order (shared/tied tensors once)."""
    inc = re.compile(scope.include) if scope.include else None
    exc = re.compile(scope.exclude) if scope.exclude else None
    chosen = []
    for name, p in model.named_parameters(remove_duplicate=True):
        if scope.lora_only and "lora_" not in name:
            continue
        if inc and not inc.search(name):
            continue
        if exc and exc.search(name):
            continue
        if not scope.embeddings and "embed" in name:
            continue
        if not scope.lm_head and "lm_head" in name:
            continue
        chosen.append((name, p))
    if not chosen:
        raise ValueError("no parameters match the direction scope (check include/exclude)")
    return chosen


def _seed_for(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def gaussian(name: str, like: torch.Tensor, seed: int) -> torch.Tensor:
    """The (seed, name) Gaussian, generated on the CPU (identical on every device), placed like `like`."""
    g = torch.Generator().manual_seed(_seed_for(seed, name))
    return torch.randn(like.shape, generator=g, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def normalise(d: torch.Tensor, w: torch.Tensor, how: str, eps: float = 1e-10) -> torch.Tensor:
    if how == "none":
        return d
    if how == "layer" or d.dim() <= 1:
        return d * (w.norm() / (d.norm() + eps))
    if how == "filter":
        dims = tuple(range(1, d.dim()))
        return d * (w.norm(dim=dims, keepdim=True) / (d.norm(dim=dims, keepdim=True) + eps))
    raise ValueError(f"normalisation '{how}' is not one of {list(NORMALISATIONS)}")


def random_direction(params: Sequence[tuple[str, torch.Tensor]], seed: int, how: str) -> list[torch.Tensor]:
    with torch.no_grad():
        out = [normalise(gaussian(n, p, seed), p.detach(), how) for n, p in params]
    zeros = [n for n, p in params if how != "none" and not p.detach().any()]
    if zeros:  # scaled to a zero norm: e.g. an untrained LoRA B, which also makes its A's perturbation invisible
        log.warning("%d all-zero tensor(s) get no perturbation under %s normalisation (e.g. %s); "
                    "landscape.normalisation=none perturbs them", len(zeros), how, zeros[0])  # fmt: skip
    return out


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum(torch.sum(x.double() * y.double()) for x, y in zip(a, b, strict=True)))


def norm(a: Sequence[torch.Tensor]) -> float:
    return math.sqrt(dot(a, a))


def cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return dot(a, b) / (norm(a) * norm(b))


def orthogonalise(d1: Sequence[torch.Tensor], d2: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gram–Schmidt: remove d2's component along d1, then give d2 back its norm (its scale stays comparable)."""
    before = norm(d2)
    coef = dot(d1, d2) / dot(d1, d1)
    out = [y - coef * x for x, y in zip(d1, d2, strict=True)]
    scale = before / norm(out)
    return [t * scale for t in out]


def difference(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """b − a: the interpolation direction from model a to model b (over the same parameter list)."""
    return [(y - x).detach() for x, y in zip(a, b, strict=True)]
