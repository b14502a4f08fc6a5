"""Basin summaries: VISAGE-style average safety, basin radius along directions, top Hessian eigenvalue."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch


def visage(values: np.ndarray, threshold: float) -> float:
    """Mean of (threshold − value) over the points below the threshold (1-D or 2-D grid).

    llm-landscape's VISAGE is this with value = ASR in % and threshold = 100: the mean of 100 − ASR over the window
    where ASR < 100 %. For a loss, points whose loss stays under the threshold count, weighted by their margin.
    """
    v = np.asarray(values, dtype=float)
    inside = v < threshold
    return float(np.mean(threshold - v[inside])) if inside.any() else 0.0


def crossing(alphas: np.ndarray, values: np.ndarray, threshold: float) -> tuple[float, float]:
    """Distance from α=0 to where `values` first exceeds `threshold`, going − and + (linear interpolation).

    Returns inf on a side that never crosses within the grid.
    """
    a, v = np.asarray(alphas, float), np.asarray(values, float)
    origin = int(np.argmin(np.abs(a)))
    out = []
    for step in (-1, 1):
        found = math.inf
        i = origin
        while 0 <= i + step < len(a):
            j = i + step
            if v[j] > threshold >= v[i]:
                t = (threshold - v[i]) / (v[j] - v[i])
                found = abs(a[i] + t * (a[j] - a[i]))
                break
            if v[j] > threshold:
                found = abs(a[j])
                break
            i = j
        out.append(found)
    return out[0], out[1]


def mean_ci(samples: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and half-width of a normal-approximation 95 % CI (0 for a single sample); infinities are dropped."""
    x = np.asarray([s for s in samples if math.isfinite(s)], float)
    if len(x) == 0:
        return math.inf, 0.0
    half = z * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else 0.0
    return float(x.mean()), float(half)


def top_hessian_eigenvalue(
    loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iters: int = 20, seed: int = 0,
    tol: float = 1e-4,
) -> float:  # fmt: skip
    """Largest-magnitude Hessian eigenvalue of loss_fn() w.r.t. params, by power iteration on Hessian-vector products.

    Needs double backward: load models with attn_implementation="eager" (SDPA has none on CPU).
    """
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=g).to(p) for p in params]
    scale = math.sqrt(sum(float((x * x).sum()) for x in v))
    v = [x / scale for x in v]
    eig = 0.0
    for _ in range(iters):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(grads, params, grad_outputs=v)
        new_eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        n = math.sqrt(sum(float((x * x).sum()) for x in hv))
        if n == 0:
            return 0.0
        v = [x.detach() / n for x in hv]
        if abs(new_eig - eig) <= tol * max(1.0, abs(new_eig)):
            return new_eig
        eig = new_eig
    return eig
