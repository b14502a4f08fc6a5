"""Per-step cost of each continual-learning method relative to plain SFT, and MagMax's merge time.

    .venv/bin/python bench/bench_methods.py [--cache-dir .cache] [--model toy|llama100m] [--steps 12]
        [--repeats 2] [--threads 2] [--memory safety|user] [--seq-len N]

Arms run interleaved (A B C ... A B C ...) from fresh copies of one model, on the same user data and safety memory,
with each method at its default strength (conf/method/*.yaml). Per arm: the median wall time of an optimiser step
(setup excluded: Fisher, stored logits) and, on CUDA, the peak allocated memory. `llama100m` is a randomly
initialised ~100M-parameter Llama (the toy data's token ids are valid in its vocabulary).
Goals (issue 14): EWC ≤ 1.1×, LwF ≤ 1.6×, DER ≤ 1.8×, A-GEM ≤ 2.2×, Refresh ≤ 2.5×; MagMax ≤ 2 s for 135M.
`der_half` is DER with a memory batch of 4 rows (`method.der.batch_size=4`, half the user batch of 8);
`derpp_1b` is DER++ with `same_batch: true`; `refresh_1b` is Refresh (the reference's own ascent pass) with
`same_batch: true`; `refresh_fast` is Refresh with `ascent: shared, same_batch: true`. Memory rows join the user
forward where DER's `joint: auto` finds it pays (not under `ascent: shared`).
`--memory user` fills the methods' memory with more user rows instead of the safety rows: the toy refusals have
3× the response tokens of the toy task's answers (11 vs 3.5 words), so with `safety` a memory pass costs more than the
user pass it is compared with; `user` measures what the method itself costs at equal tokens.
`--seq-len N` (llama100m only) replaces every row, user and memory alike, by N random token ids scored on their second
half: the toy rows are ≈ 17 tokens, so at batch 8 an SFT step sees ≈ 136 tokens and per-parameter passes (the
optimiser's, EWC's closed form) weigh far more than at a fine-tuning batch of 8 × 128 tokens.
Prints a table, then one line `JSON {...}`.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `sweeps` importable

from sweeps.config import OptimConfig
from sweeps.formatting import IGNORE_INDEX, Encoded, PromptFormatter
from sweeps.loop import train
from sweeps.methods import Resources, build_methods
from sweeps.methods.magmax import magmax
from sweeps.toyworld import World, WorldConfig, ensure_world, toy_examples

ROOT = Path(__file__).resolve().parents[1]
ARMS = ["sft", "ewc", "lwf", "der", "der_half", "derpp", "derpp_1b", "agem", "refresh", "refresh_1b", "refresh_fast",
        "magmax"]  # fmt: skip
# arm → (method, overrides of its conf/method default): the cheaper variants of DER, DER++ and Refresh
VARIANTS = {"der_half": ("der", {"batch_size": 4}), "derpp_1b": ("derpp", {"same_batch": True}),
            "refresh_1b": ("refresh", {"same_batch": True}),
            "refresh_fast": ("refresh", {"ascent": "shared", "same_batch": True})}  # fmt: skip
GOALS = {"ewc": 1.1, "lwf": 1.6, "der": 1.8, "agem": 2.2, "refresh": 2.5, "refresh_1b": 2.5,
         "refresh_fast": 2.5}  # fmt: skip


def _entry(key: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "method" / f"{key}.yaml"))[key]


def bench_arm(model, arm: str, user, safety, pad_id: int, steps: int, base: Path) -> tuple[float, float | None]:
    key, extra = VARIANTS.get(arm, (arm, {}))
    stack = build_methods({} if arm == "sft" else {key: {**_entry(key), **extra}})
    streams = {f"{m.name}.{a}": safety for m in stack.methods for a in type(m).streams}
    stamps: list[float] = []
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def tick(step: int, loss: float) -> None:
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    optim = OptimConfig(lr=1e-4, batch_size=8, max_steps=steps, scheduler="constant")
    train(model, user, optim, stack, pad_id=pad_id, seed=0, progress=False, on_step=tick,
          resources=Resources(streams=streams, base_path=base))  # fmt: skip
    per_step = statistics.median(b - a for a, b in itertools.pairwise(stamps[1:]))  # step 1 warms up
    return per_step, (torch.cuda.max_memory_allocated() / 2**20 if cuda else None)


def bench_magmax(n_params: int = 135_000_000, chunk: int = 4_500_000) -> float:
    g = torch.Generator().manual_seed(0)
    sizes = [chunk] * (n_params // chunk) + [n_params % chunk]
    tensors = [[torch.randn(s, generator=g) for _ in range(3)] for s in sizes if s]
    start = time.perf_counter()
    for b, s, u in tensors:
        magmax(b, [s, u], 0.5)
    return time.perf_counter() - start


def random_rows(n: int, seq_len: int, vocab: int, seed: int) -> list[Encoded]:
    """n rows of seq_len random token ids (no special ids), the loss on the second half."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, seq_len), generator=g).tolist()
    half = seq_len // 2
    return [Encoded(row, [IGNORE_INDEX] * half + row[half:]) for row in ids]


def bench_inputs(cache_dir: str, kind: str, memory: str = "safety",
                 seq_len: int = 0) -> tuple[torch.nn.Module, Path, Any, list, list]:  # fmt: skip
    """The model (toy θ_aligned, or the random ~100M Llama), its "θ_base" folder, the toy tokenizer, 256 user and 64
    memory rows of ≤ 64 tokens (the toy world's, whose token ids are valid in both vocabularies): safety pairs, or
    with `memory="user"` 64 further user rows; with `seq_len`, random rows of that length for both."""
    world = World(WorldConfig())
    root = ensure_world(world.cfg, cache_dir)
    tok = AutoTokenizer.from_pretrained(root / "aligned")
    if kind == "toy":
        model, base = AutoModelForCausalLM.from_pretrained(root / "aligned"), root / "base"
    else:
        cfg = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=10,
                          num_attention_heads=12, num_key_value_heads=12, tie_word_embeddings=True)  # fmt: skip
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        base = Path(cache_dir) / "bench-llama100m-base"
        if not (base / "model.safetensors").exists():
            LlamaForCausalLM(cfg).save_pretrained(base, safe_serialization=True)  # a different random "θ_base"
    if seq_len:
        vocab = model.config.vocab_size
        return model, base, tok, random_rows(256, seq_len, vocab, 0), random_rows(64, seq_len, vocab, 1)
    fmt = PromptFormatter(tok)
    user = [fmt.encode_pair(e.prompt, e.response, 64) for e in toy_examples("user_train", world)[:256]]
    rows = toy_examples("safety", world)[:64] if memory == "safety" else toy_examples("user_train", world)[256:320]
    safety = [fmt.encode_pair(e.prompt, e.response, 64) for e in rows]
    return model, base, tok, user, safety


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--model", choices=["toy", "llama100m"], default="toy")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--memory", choices=["safety", "user"], default="safety")
    ap.add_argument("--seq-len", type=int, default=0, help="random rows of this many tokens (llama100m only)")
    args = ap.parse_args()
    if args.seq_len and (args.model != "llama100m" or args.seq_len < 2):
        ap.error("--seq-len needs --model llama100m and at least 2 tokens")
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, base, tok, user, safety = bench_inputs(args.cache_dir, args.model, args.memory, args.seq_len)
    model = model.to(device).eval()
    arms = args.arms.split(",")
    times: dict[str, list[float]] = {a: [] for a in arms}
    peaks: dict[str, float | None] = {}
    for _ in range(args.repeats):
        for arm in arms:
            t, peak = bench_arm(copy.deepcopy(model), arm, user, safety, tok.pad_token_id, args.steps, base)
            times[arm].append(t)
            peaks[arm] = peak
    sft = statistics.median(times["sft"])
    out = {"model": args.model, "device": device, "params": sum(p.numel() for p in model.parameters()),
           "threads": args.threads, "steps": args.steps, "repeats": args.repeats, "memory": args.memory,
           "seq_len": args.seq_len, "arms": {}}  # fmt: skip
    rows = f"random {args.seq_len}-token rows" if args.seq_len else f"memory: {args.memory} rows"
    print(f"{args.model} ({out['params'] / 1e6:.1f}M params, {device}, {rows}): per-step time relative to SFT")
    for arm in arms:
        t = statistics.median(times[arm])
        ratio = t / sft
        goal = GOALS.get(arm)
        out["arms"][arm] = {"step_s": t, "ratio": ratio, "peak_mib": peaks[arm], "goal": goal}
        mem = f"  peak {peaks[arm]:.0f} MiB" if peaks[arm] is not None else ""
        mark = "" if goal is None else (" ok" if ratio <= goal else f" OVER goal {goal}×")
        print(f"  {arm:8s} {t * 1e3:8.1f} ms/step  {ratio:5.2f}×{mem}{mark}")
    out["magmax_135m_s"] = bench_magmax()
    print(f"  MagMax merge of 135M parameters: {out['magmax_135m_s']:.2f} s (goal ≤ 2 s)")
    print("JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
