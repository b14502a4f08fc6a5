"""The AdamW step on a ~100M-parameter model: torch's three implementations side by side, and EWC's pass beside them.

    .venv/bin/python bench/bench_optimizer.py [--steps 8] [--repeats 3] [--threads 2] [--device cpu|cuda]
        [--chunks 65536 262144 ...]

On the parameters of bench_methods.py's random ~100M Llama (fp32, random gradients, weight decay 0.1), times one
optimiser step of `torch.optim.AdamW` as the for-loop implementation (torch's default for CPU tensors; skipped on
CUDA), `foreach` and `fused` (what sweeps.loop uses), interleaved (A B C A B C …), median over steps after the first
of each arm, best over repeats; then EWC's closed-form penalty pass (sweeps.methods.ewc: reads θ, θ*, F and the
gradient, writes the gradient) on the same tensors, in the device's default chunks (sweeps.methods._chunks) or in each
of `--chunks` sizes (fp32 elements). Also checks that the implementations give the same weights after the steps.
Prints a table, then one line `JSON {...}`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `sweeps` importable

from sweeps.methods import _chunks
from sweeps.methods.ewc import EWC

IMPLEMENTATIONS = {"for-loop": {"foreach": False, "fused": False}, "foreach": {"foreach": True},
                   "fused": {"fused": True}}  # fmt: skip
SHAPES = [(32000, 768), (768,)] + [(768, 768)] * 4 * 10 + [(2048, 768)] * 2 * 10 + [(768, 2048)] * 10 + [(768,)] * 20


def parameters(seed: int = 0, device: str = "cpu") -> list[torch.Tensor]:
    """Fresh fp32 tensors with the shapes of the ~100M random Llama (vocab 32k, width 768, 10 layers, MLP 2048)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g) * 0.02).to(device) for s in SHAPES]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_steps(kind: str, steps: int, device: str = "cpu") -> tuple[float, list[torch.Tensor]]:
    params = [torch.nn.Parameter(t) for t in parameters(device=device)]
    grads = parameters(seed=1, device=device)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, **IMPLEMENTATIONS[kind])
    times = []
    for _ in range(steps):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        _sync(device)
        start = time.perf_counter()
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
        optimizer.zero_grad(set_to_none=True)
    return statistics.median(times[1:]), [p.detach() for p in params]


def time_ewc(steps: int, device: str = "cpu", chunk: int | None = None) -> float:
    """EWC's after_backward on the ~100M tensors; `chunk` overrides the device's default chunk size."""
    saved = _chunks.CHUNK, _chunks.DEVICE_CHUNK
    if chunk:
        _chunks.CHUNK = _chunks.DEVICE_CHUNK = chunk
    try:
        return _time_ewc(steps, device)
    finally:
        _chunks.CHUNK, _chunks.DEVICE_CHUNK = saved


def _time_ewc(steps: int, device: str) -> float:
    params = {f"p{i}": torch.nn.Parameter(t) for i, t in enumerate(parameters(device=device))}
    ewc = EWC(lam=100.0)
    ewc.params, ewc.star = params, {n: p.detach() + 1e-3 for n, p in params.items()}
    ewc.fisher = {n: torch.rand_like(p) for n, p in params.items()}
    grads = parameters(seed=1, device=device)
    times = []
    for _ in range(steps):
        for p, g in zip(params.values(), grads, strict=True):
            p.grad = g.clone()
        _sync(device)
        start = time.perf_counter()
        ewc.after_backward(torch.nn.Module())
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def measure(steps: int = 8, repeats: int = 3, device: str = "cpu", chunks: list[int] | None = None) -> dict[str, Any]:
    """Best-of-`repeats` medians, {"step_s": {implementation or "ewc@<chunk>": s}, …}, and each implementation's largest
    weight difference from the first one timed ("reference")."""
    best: dict[str, float] = {}
    weights: dict[str, list[torch.Tensor]] = {}
    kinds = [k for k in IMPLEMENTATIONS if device == "cpu" or k != "for-loop"] + [f"ewc@{c}" for c in chunks or [0]]
    for _ in range(repeats):
        for kind in kinds:
            if kind.startswith("ewc@"):
                t = time_ewc(steps, device, int(kind[4:]))
            else:
                t, weights[kind] = time_steps(kind, steps, device)
            best[kind] = min(best.get(kind, t), t)
    first = next(iter(weights))
    diff = {k: max(float((a - b).abs().max()) for a, b in zip(weights[k], weights[first], strict=True))
            for k in weights if k != first}  # fmt: skip
    return {"params": sum(math.prod(s) for s in SHAPES), "device": device, "steps": steps, "repeats": repeats,
            "step_s": best, "reference": first, "max_abs_diff": diff}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--chunks", type=int, nargs="*", default=[], help="EWC's pass at these chunk sizes (elements)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = measure(args.steps, args.repeats, args.device, args.chunks) | {"threads": args.threads}
    best, ref = out["step_s"], out["reference"]
    print(f"AdamW step on {out['params'] / 1e6:.1f}M fp32 parameters, {args.device}, {args.threads} threads "
          f"(median of {args.steps - 1} steps, best of {args.repeats})")  # fmt: skip
    for kind, t in best.items():
        if kind.startswith("ewc@"):
            chunk = int(kind[4:]) or _chunks.chunk_size(torch.device(args.device))
            print(f"  EWC pass, chunks of {chunk:>8d} {t * 1e3:8.1f} ms  ({t / best['fused']:.2f}× a fused AdamW step)")
        else:
            extra = f"  max |Δθ| vs {ref} {out['max_abs_diff'][kind]:.1e}" if kind in out["max_abs_diff"] else ""
            print(f"  {kind:9s} {t * 1e3:8.1f} ms  {best[ref] / t:5.2f}× faster than {ref}{extra}")
    print("JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
