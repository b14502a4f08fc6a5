"""Wall time inside each method's own hooks per optimiser step, on the ~100M random Llama of bench_methods.py.

    .venv/bin/python bench/bench_method_hooks.py [--steps 6] [--arms sft,ewc,der,refresh] [--seq-len N]

Less noisy than whole-step ratios on a shared CPU: it times only the code a method adds (EWC's after_backward,
Refresh's before_step, DER's step_loss forward — its backward runs in the loop and is not included) and the AdamW
step beside it, per step after the first. Prints one line per arm.
"""

from __future__ import annotations

import argparse
import collections
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_methods

from sweeps.methods import DER, EWC, Refresh

TIMES: dict[str, list[float]] = collections.defaultdict(list)


def _timed(owner: type, name: str, key: str) -> None:
    original = getattr(owner, name)

    def run(self, *args, **kwargs):
        start = time.perf_counter()
        out = original(self, *args, **kwargs)
        TIMES[key].append(time.perf_counter() - start)
        return out

    setattr(owner, name, run)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arms", default="sft,ewc,der,refresh")
    ap.add_argument("--seq-len", type=int, default=0, help="random rows of this many tokens")
    args = ap.parse_args()
    if args.seq_len and args.seq_len < 2:
        ap.error("--seq-len needs at least 2 tokens")
    torch.set_num_threads(args.threads)
    for owner, name in ((EWC, "after_backward"), (Refresh, "before_step"), (DER, "step_loss")):
        _timed(owner, name, f"{owner.__name__}.{name}")
    _timed(torch.optim.AdamW, "step", "AdamW.step")
    model, base, tok, user, safety = bench_methods.bench_inputs(args.cache_dir, "llama100m", seq_len=args.seq_len)
    model = model.eval()
    for arm in args.arms.split(","):
        TIMES.clear()
        step, _ = bench_methods.bench_arm(copy.deepcopy(model), arm, user, safety, tok.pad_token_id, args.steps, base)
        hooks = {k: statistics.median(v[1:]) for k, v in TIMES.items() if len(v) > 1}
        print(f"{arm:8s} step {step * 1e3:7.1f} ms  " + "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in hooks.items()))


if __name__ == "__main__":
    main()
