"""Wall time inside each method's own hooks per optimiser step, on the ~100M random Llama of bench_methods.py.

    .venv/bin/python bench/bench_method_hooks.py [--steps 6] [--arms sft,ewc,der,refresh]

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

import bench_methods as bm
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sweeps.formatting import PromptFormatter
from sweeps.methods import DER, EWC, Refresh
from sweeps.toyworld import World, WorldConfig, ensure_world, toy_examples

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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for owner, name in ((EWC, "after_backward"), (Refresh, "before_step"), (DER, "step_loss")):
        _timed(owner, name, f"{owner.__name__}.{name}")
    _timed(torch.optim.AdamW, "step", "AdamW.step")
    world = World(WorldConfig())
    root = ensure_world(world.cfg, args.cache_dir)
    tok = AutoTokenizer.from_pretrained(root / "aligned")
    cfg = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=10,
                      num_attention_heads=12, num_key_value_heads=12, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    base = Path(args.cache_dir) / "bench-llama100m-base"
    if not (base / "model.safetensors").exists():
        LlamaForCausalLM(cfg).save_pretrained(base, safe_serialization=True)
    fmt = PromptFormatter(tok)
    user = [fmt.encode_pair(e.prompt, e.response, 64) for e in toy_examples("user_train", world)[:256]]
    safety = [fmt.encode_pair(e.prompt, e.response, 64) for e in toy_examples("safety", world)[:64]]
    for arm in args.arms.split(","):
        TIMES.clear()
        step, _ = bm.bench_arm(copy.deepcopy(model), arm, user, safety, tok.pad_token_id, args.steps, base)
        hooks = {k: statistics.median(v[1:]) for k, v in TIMES.items() if len(v) > 1}
        print(f"{arm:8s} step {step * 1e3:7.1f} ms  " + "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in hooks.items()))


if __name__ == "__main__":
    main()
