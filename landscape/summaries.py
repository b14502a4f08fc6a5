"""Basin summaries: VISAGE-style average safety, basin radius along directions, top Hessian eigenvalue."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm


def visage(values: np.ndarray, threshold: float) -> float:
    """Mean of (threshold − value) over the points below the threshold (1-D or 2-D grid).

    llm-landscape's VISAGE is this with value = ASR in % and threshold = 100: the mean of 100 − ASR over the window
    where ASR < 100 %. For a loss, points whose loss stays under the threshold count, weighted by their margin.
    A non-finite value (a diverged point) is outside.
    """
    v = np.asarray(values, dtype=float)
    inside = np.isfinite(v) & (v < threshold)
    return float(np.mean(threshold - v[inside])) if inside.any() else 0.0


def crossing(alphas: np.ndarray, values: np.ndarray, threshold: float) -> tuple[float, float]:
    """Distance from α=0 to where `values` first exceeds `threshold`, going − and + (linear interpolation).

    A non-finite value (NaN, ±inf: a diverged point) is outside the basin, beyond any threshold: the basin ends at
    the last finite point before it. An origin already outside gives 0. Returns inf on a side that never crosses
    within the grid.
    """
    a = np.asarray(alphas, float)
    v = np.asarray(values, float)
    outside = ~np.isfinite(v) | (v > threshold)
    origin = int(np.argmin(np.abs(a)))
    if outside[origin]:
        return 0.0, 0.0
    out = []
    for step in (-1, 1):
        found = math.inf
        i = origin
        while 0 <= i + step < len(a):
            j = i + step
            if outside[j]:  # v[i] is inside: interpolate to the threshold, or stop at v[i] before a diverged point
                t = (threshold - v[i]) / (v[j] - v[i]) if math.isfinite(v[j]) else 0.0
                found = abs(a[i] + t * (a[j] - a[i]))
                break
            i = j
        out.append(found)
    return out[0], out[1]


def power_iteration(
    loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iters: int = 20, seed: int = 0,
    tol: float = 1e-3, shift: float = 0.0, desc: str | None = None,
) -> tuple[float, float, int]:  # fmt: skip
    """(eigenvalue, relative residual, iterations): the Hessian eigenvalue farthest from `shift`, by power iteration
    on Hessian-vector products of H − shift·I. Stops when ‖(H − shift·I)v − μv‖ ≤ tol·|μ|, i.e. v is an eigenvector.

    Needs double backward: load models with attn_implementation="eager" (SDPA has none on CPU).
    """
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=g).to(p) for p in params]
    scale = math.sqrt(sum(float((x * x).sum()) for x in v))
    v = [x / scale for x in v]
    mu, residual = 0.0, math.inf
    bar = tqdm(range(1, iters + 1), desc=desc, leave=False, disable=desc is None)
    for k in bar:
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hv = [h - shift * x for h, x in zip(torch.autograd.grad(grads, params, grad_outputs=v), v, strict=True)]
        del loss, grads  # free this graph before the next one is built (peak memory: one double-backward graph)
        mu = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))  # Rayleigh quotient (‖v‖ = 1)
        residual = math.sqrt(sum(float(((a - mu * b) ** 2).sum()) for a, b in zip(hv, v, strict=True)))
        residual /= max(abs(mu), 1e-12)
        bar.set_postfix(eigenvalue=f"{mu + shift:.4g}", residual=f"{residual:.1e}")
        n = math.sqrt(sum(float((x * x).sum()) for x in hv))
        if n == 0 or residual <= tol:
            return mu + shift, residual, k
        v = [x.detach() / n for x in hv]
    return mu + shift, residual, iters


def top_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iters: int = 20,
                           seed: int = 0) -> float:  # fmt: skip
    """The largest-magnitude Hessian eigenvalue (power iteration)."""
    return power_iteration(loss_fn, params, iters, seed)[0]


def hessian_top(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iters: int = 20,
                seed: int = 0, desc: str | None = None) -> dict[str, float]:  # fmt: skip
    """The top (most positive) Hessian eigenvalue — the sharpness — and the largest-magnitude one, with residuals.

    Power iteration finds the largest |λ|; away from a minimum that can be negative, and then a second run on
    H − λ·I finds the top of the spectrum. A residual above 1e-3 means the iteration budget ran out first
    (raise landscape.hessian_iters).
    """
    magnitude, res_m, it_m = power_iteration(loss_fn, params, iters, seed, desc=desc)
    out = {"largest_magnitude": magnitude, "largest_magnitude_residual": res_m, "iterations": it_m}
    if magnitude >= 0:
        return {"top": magnitude, "top_residual": res_m, **out}
    top, res_t, it_t = power_iteration(loss_fn, params, iters, seed, shift=magnitude,
                                       desc=desc and f"{desc} (shifted)")  # fmt: skip
    return {"top": top, "top_residual": res_t, **out, "iterations": it_m + it_t}
